//! Starting a pod the way kubelet does, retrying a sandbox whose guest the nested test host lost
//! as kubelet's pod sync would (the CRI suites that start many pods share it), and the same for
//! a pod's whole life ([`retry_if_guest_lost`]).

use std::time::Duration;

use k8s_cri::v1::{PodSandboxConfig, PodSandboxState};

use super::{container_config, eventually, running, wait_container, Cri};
use crate::containerd::Containerd;
use crate::guest_loss::{environment_loss, fetch_faults_seen, VM_ENDED};

/// Runs `attempt(0)`, a pod's whole life (it starts the pod and removes it before it returns,
/// also when it fails), and once more as `attempt(1)` if it failed because the nested test host
/// lost the pod's running guest ([`crate::guest_loss`]): a pod whose VM died under it is one
/// kubelet would recreate. The evidence is the failure's words and the shim's account of the
/// VM's end in containerd's log, written during the attempt. The retry is announced on stderr;
/// any other failure is returned at once, and so is a second failure.
pub fn retry_if_guest_lost<T>(
    c: &Containerd,
    what: &str,
    mut attempt: impl FnMut(u32) -> Result<T, String>,
) -> Result<T, String> {
    let log_from = c.log_len();
    let faults_before = fetch_faults_seen();
    let first = match attempt(0) {
        Ok(done) => return Ok(done),
        Err(e) => e,
    };
    let ends: Vec<String> = c
        .log_since(log_from)
        .lines()
        .filter(|l| l.contains(VM_ENDED))
        .map(str::to_owned)
        .collect();
    let evidence = format!("{first}\n{}", ends.join("\n"));
    let Some(loss) = environment_loss(&evidence, faults_before) else {
        return Err(format!(
            "{what}: {first}\n(not retried: only a guest the test host lost is; the shim's \
             account of VM ends: {ends:?})"
        ));
    };
    eprintln!("*** RETRY {what} ({loss}): {first}; the pod is gone, running it again");
    attempt(1).map_err(|e| format!("{what}: failed twice: first {first}; then {e}"))
}

/// A pod with one `sleep` container, started as kubelet starts it: a sandbox that failed to
/// start because the nested test host lost its guest ([`crate::guest_loss`]: a death or hang in
/// early kernel setup, or a triple fault on the test host's instruction-fetch fault) is removed
/// and the pod tried once more as a new attempt, which is what kubelet's pod sync does. On the
/// nested test host about one guest boot in a hundred ends that way under any VMM (QEMU's
/// microvm loses them at the same rate: scripts/boot-stress.sh, issue 3); husk must report it
/// with its cause and leave nothing behind, which the final leak check verifies. Every retry is
/// announced on stderr. Any other failure is returned at once.
pub fn start_pod_like_kubelet(
    cri: &Cri,
    cfg: &mut PodSandboxConfig,
    i: usize,
    handler: &str,
) -> Result<(String, String), String> {
    let once = |cfg: &PodSandboxConfig| -> Result<(String, String), (Option<String>, String)> {
        let pod = cri
            .run_pod(cfg, handler)
            .map_err(|e| (None, format!("RunPodSandbox: {e}")))?;
        let started = cri
            .create_and_start(&pod, cfg, &container_config("c", &["sleep", "3600"]))
            .map_err(|e| format!("container: {e}"))
            .and_then(|ctr| {
                wait_container(cri, &ctr, Duration::from_secs(300), running)
                    .map(|_| ctr)
                    .map_err(|e| format!("container: {e:#}"))
            });
        match started {
            Ok(ctr) => Ok((pod, ctr)),
            Err(e) => Err((Some(pod), e)),
        }
    };
    let faults_before = fetch_faults_seen();
    let (dead, first) = match once(cfg) {
        Ok(started) => return Ok(started),
        Err(failed) => failed,
    };
    let Some(loss) = environment_loss(&first, faults_before) else {
        return Err(format!(
            "pod {i}: {first} (not retried: only a guest the test host lost is)"
        ));
    };
    if let Some(pod) = &dead {
        // containerd marks the sandbox NOTREADY when it handles the sandbox task's exit event,
        // which can trail the container's failure a little.
        let notready = PodSandboxState::SandboxNotready as i32;
        if !eventually(Duration::from_secs(15), || {
            cri.pod_status(pod).is_ok_and(|s| s.state == notready)
        }) {
            let state = cri.pod_status(pod).map(|s| s.state);
            return Err(format!(
                "pod {i}: {first} (sandbox state {state:?}: not retried)"
            ));
        }
        cri.stop_and_remove_pod(pod)
            .map_err(|e| format!("pod {i}: removing the dead sandbox: {e}"))?;
    }
    eprintln!(
        "*** RETRY pod {i} ({loss}): {first}; the sandbox is gone, retrying as kubelet would"
    );
    if let Some(m) = cfg.metadata.as_mut() {
        m.attempt += 1;
    }
    once(cfg).map_err(|(_, e)| format!("pod {i}: failed twice: first {first}; then {e}"))
}
