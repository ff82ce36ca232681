//! The pod's side of templates: whether its VM can restore one, making the restored guest the
//! pod's own, and what a failed restore or a missing template leads to.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use husk_protocol::agent::api;
use husk_protocol::template::{lookup, Lookup, TemplateShape};

use super::build;
use crate::config::{Artifacts, HuskConfig};
use crate::vm::size::VmSize;
use crate::vm::{BootError, BootRequest, Vm};

/// Random bytes a restored guest gets from the host.
pub const ENTROPY_BYTES: usize = 64;

/// The template shape of the pod's VM, if templates may serve it (they are on in the husk
/// config). A template has as many NICs as the pod; their MACs are the template's until
/// SetupSandbox gives each the pod's.
pub fn shape_for(req: &BootRequest, a: &Artifacts, size: VmSize) -> Option<TemplateShape> {
    if !req.config.templates {
        return None;
    }
    match super::shape(
        a,
        size,
        &req.config.extra_cmdline,
        req.net.len(),
        req.config.free_page_reporting,
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("the pod's template shape: {e}; the pod boots");
            None
        }
    }
}

/// How long a restore may take before the pod boots instead: a third of the boot timeout (a
/// restore takes well under a second on a host with hardware virtualization).
pub fn limit(boot_timeout: Duration) -> Duration {
    boot_timeout / 3
}

/// Bytes from the host's CSPRNG.
fn entropy() -> std::io::Result<[u8; ENTROPY_BYTES]> {
    let mut buf = [0u8; ENTROPY_BYTES];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: getrandom writes at most `len - got` bytes into the rest of `buf`.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        got += n as usize;
    }
    Ok(buf)
}

/// Makes a VM restored from a template the pod's own before anything runs in it: fresh
/// entropy and a CRNG reseed, the wall clock, the log stream, a boot id made after both. On
/// failure the VM is killed.
pub async fn make_own(mut vm: Vm) -> Result<Vm, BootError> {
    let fail = |e: std::io::Error| BootError::Host {
        context: "making the restored guest the pod's own".into(),
        source: e,
    };
    let mut req = api::RestoredRequest::new();
    req.entropy = entropy().map_err(fail)?.to_vec();
    req.realtime_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    match vm.agent.restored(&req).await {
        Ok(resp) => {
            tracing::info!(
                pid = vm.pid,
                boot_id = resp.boot_id.as_str(),
                "restored from a template"
            );
            vm.info.boot_id = resp.boot_id;
            vm.from_template = true;
            Ok(vm)
        }
        Err(e) => {
            vm.kill().await;
            Err(BootError::Agent(e))
        }
    }
}

/// A restore of the template in `dir` failed: the pod boots instead, and the template goes
/// (the next pod of its shape makes a fresh one).
pub fn failed(dir: &Path, e: &BootError) {
    tracing::warn!(
        template = %dir.display(),
        "restoring the template failed, the pod boots instead and the template is removed: {e}"
    );
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(template = %dir.display(), "removing the template: {e}");
    }
}

/// After a pod of `shape` booted: make its template in the background if there is none.
pub fn after_cold_boot(bindir: &Path, config: &HuskConfig, size: VmSize, shape: TemplateShape) {
    if lookup(&config.template_dir, &shape) == Lookup::Missing {
        build::in_background(PathBuf::from(bindir), config.clone(), size, shape);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_draws_of_entropy_differ() {
        assert_ne!(entropy().unwrap(), entropy().unwrap());
    }

    #[test]
    fn a_restore_gets_a_third_of_the_boot_timeout() {
        assert_eq!(limit(Duration::from_secs(30)), Duration::from_secs(10));
    }
}
