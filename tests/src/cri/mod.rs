//! Kubernetes' view of husk: containerd's CRI plugin driven the way kubelet drives it.
//!
//! - [`config`] (kept with the containerd that writes it): the CRI plugin's config (runtimes `runc` and `husk`, the pause image, a
//!   private CNI bridge) that [`crate::containerd::Containerd::start_cri`] writes.
//! - [`client`]: a blocking `runtime.v1` client over containerd's socket.
//! - Here: importing the images into `k8s.io`, pod and container configs as kubelet builds them,
//!   and waiting for states.

pub mod client;
mod kubelet;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, DnsConfig, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, PodSandboxConfig, PodSandboxMetadata,
};

use crate::containerd::{Containerd, HuskArtifacts, HuskSettings};
use crate::oci_image::{self, BUSYBOX_REF};

pub use crate::containerd::cri_config as config;
pub use crate::containerd::cri_config::NAMESPACE;
pub use client::{Cri, CriError};
pub use kubelet::{retry_if_guest_lost, start_pod_like_kubelet};

/// The DNS server CRI writes into the pods' resolv.conf (nothing answers there; the tests only
/// read the file).
pub const DNS_SERVER: &str = "10.231.0.53";
/// The DNS search domain of the test pods.
pub const DNS_SEARCH: &str = "husk.test";
/// Where CRI lists network namespaces it creates (`/var/run/netns/cni-<uuid>`).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Builds the busybox and pause images and imports both into `k8s.io` (the containerd must
/// have been started with [`Containerd::start_cri`]).
pub fn import_images(c: &Containerd) -> anyhow::Result<()> {
    if c.namespace() != NAMESPACE {
        bail!("import_images needs a CRI containerd (Containerd::start_cri)");
    }
    c.import_busybox()?;
    let pause = oci_image::pause_image(&c.base().join("img/pause.tar"))?;
    let out = c.ctr(
        &["image", "import", &pause.path.display().to_string()],
        None,
        Duration::from_secs(120),
    );
    if out.code != 0 {
        bail!("ctr -n k8s.io image import (pause) failed: {out}");
    }
    Ok(())
}

/// husk's settings from the environment `make e2e` sets; panics naming what is missing.
pub fn husk_settings() -> HuskSettings {
    match HuskArtifacts::from_env() {
        Ok(a) => HuskSettings::new(a),
        Err(e) => panic!("CRI husk tests need husk's artifacts (run them with `make e2e`): {e}"),
    }
}

/// A CRI containerd (with husk when `husk` is given) with both images imported, and a client.
pub fn start(husk: Option<&HuskSettings>) -> (Containerd, Cri) {
    let c = Containerd::start_cri(husk).expect("starting containerd with CRI");
    import_images(&c).expect("importing busybox and pause into k8s.io");
    let client = Cri::connect(&c.socket()).expect("connecting to CRI");
    (c, client)
}

/// [`start`] with husk as a node runs it by default, VM templates on, and the template of a
/// CRI pod of `settings`' size (one NIC) made ahead of time, so every pod restores it;
/// `who` prefixes what the build printed.
pub fn start_restoring(settings: &HuskSettings, who: &str) -> (Containerd, Cri) {
    let mut settings = settings.clone();
    settings.templates = true;
    let (c, cri) = start(Some(&settings));
    let said = c
        .build_template(&settings.artifacts.shim, 1)
        .unwrap_or_else(|e| panic!("{who}: {e:#}"));
    eprintln!("{who}: {said}");
    (c, cri)
}

/// A pod config as kubelet sends it: metadata, hostname, log directory, DNS, optional
/// annotations (kubelet copies the pod's) and sandbox resources.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "husk-test".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec![DNS_SERVER.into()],
            searches: vec![DNS_SEARCH.into()],
            options: vec!["ndots:2".into()],
        }),
        // Where kubelet's cgroupfs driver puts a BestEffort pod: husk-vmm goes below it.
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/besteffort/poduid-{name}", crate::cgroup::KUBEPODS),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container config running `cmd`, logging to `<name>.log` in the pod's log dir.
pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_REF.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// `config` as a privileged pod (CRI allows privileged containers only in one).
pub fn privileged_pod(mut config: PodSandboxConfig) -> PodSandboxConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(LinuxSandboxSecurityContext {
        privileged: true,
        ..Default::default()
    });
    config
}

/// `config` as a privileged container.
pub fn privileged_container(mut config: ContainerConfig) -> ContainerConfig {
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// `config` with a memory limit (bytes).
pub fn with_memory_limit(mut config: ContainerConfig, bytes: i64) -> ContainerConfig {
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: bytes,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// Polls ContainerStatus until `pred` holds (bounded by `timeout`); returns the last status.
pub fn wait_container(
    cri: &Cri,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&ContainerStatus) -> bool,
) -> anyhow::Result<ContainerStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = cri
            .container_status(id)
            .with_context(|| format!("status of {id}"))?;
        if pred(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("container {id} did not reach the expected state within {timeout:?}: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `f` every 300 ms until it returns true (bounded); false when the deadline passed.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    f()
}

/// Whether a status is RUNNING.
pub fn running(s: &ContainerStatus) -> bool {
    s.state == ContainerState::ContainerRunning as i32
}

/// Whether a status is EXITED.
pub fn exited(s: &ContainerStatus) -> bool {
    s.state == ContainerState::ContainerExited as i32
}

/// The network namespaces CNI/CRI have under [`NETNS_DIR`].
pub fn netns_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What a CRI containerd has left over, without knowing ids (failed RunPodSandbox calls leave
/// none to ask about): shims and husk-vmm processes of this harness, mounts and entries under
/// husk's state directory, tasks, containers, and network namespaces not in `netns_before`.
pub fn leftovers_anywhere(c: &Containerd, netns_before: &[String]) -> Vec<String> {
    use crate::containerd::{mounts_below, processes_with};
    let mut found = Vec::new();
    let sock = c.socket().display().to_string();
    for (pid, cmd) in processes_with("containerd-shim-husk-v2") {
        if cmd.contains(&sock) {
            found.push(format!("husk shim process {pid}: {cmd}"));
        }
    }
    for (pid, cmd) in processes_with(&c.husk_state.display().to_string()) {
        found.push(format!("process {pid}: {cmd}"));
    }
    for m in mounts_below(&c.husk_state) {
        found.push(format!("mount {m}"));
    }
    for g in crate::cgroup::leftover_pod_cgroups() {
        found.push(format!("cgroup {g}"));
    }
    let writable = crate::containerd::writable_dir(&c.husk_state);
    for l in crate::containerd::loop_devices_below(&writable) {
        found.push(format!("loop device {l}"));
    }
    if let Ok(d) = std::fs::read_dir(&writable) {
        for e in d.flatten() {
            found.push(format!("writable-layer file {}", e.path().display()));
        }
    }
    if let Ok(d) = std::fs::read_dir(&c.husk_state) {
        for e in d.flatten() {
            found.push(format!("husk state {}", e.path().display()));
        }
    }
    let t = Duration::from_secs(30);
    for what in [["task", "ls", "-q"], ["container", "ls", "-q"]] {
        for line in c.ctr(&what, None, t).stdout.lines() {
            found.push(format!("{} {}", what[0], line.trim()));
        }
    }
    for n in netns_names() {
        if !netns_before.contains(&n) {
            found.push(format!("netns {NETNS_DIR}/{n}"));
        }
    }
    found
}

/// Waits (at most 60 s: shims exit after their last Delete) until
/// [`leftovers_anywhere`] is empty; the error lists what is left.
pub fn wait_nothing_left(c: &Containerd, netns_before: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftovers_anywhere(c, netns_before);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "left behind:\n{}\ncontainerd log:\n{}",
                left.join("\n"),
                c.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
