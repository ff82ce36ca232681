//! The `delete` action: containerd's cleanup when it cannot talk to the shim (the shim was
//! killed, or containerd restarted and the shim is gone). It runs without the daemon, so it
//! finds everything from files: the bundle's `config.json` (which sandbox), `<bundle>/husk-state`
//! (where the sandbox's state is), `<state>/vmm.pid` (which husk-vmm).
//!
//! containerd also runs it after every ordinary task delete (when it closes that task's
//! connection), while the shim may still serve other containers of the pod. So: if the shim
//! still answers on its socket, the live shim owns the state and nothing is touched. If it
//! does not, husk-vmm is killed (its VM is useless without a shim), the container's mounts are
//! detached and its directory removed, and for the sandbox's own id (or the last container)
//! the whole state directory, after the pod network's taps and qdiscs (`<state>/net.json`) and
//! the pod's cgroup (`<state>/cgroup`).
//! Running it twice is harmless.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config;
use crate::events::now;
use crate::paths::{SandboxPaths, BUNDLE_STATE_LINK};
use crate::spec::Spec;
use crate::{share, unmount};

/// husk-vmm's pid from `<state>/vmm.pid` when that process is alive and runs this sandbox's
/// `vm.json` (a recycled pid is not mistaken for it).
pub fn live_vmm(paths: &SandboxPaths) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(paths.vmm_pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = paths.vm_config();
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == want.as_os_str().as_encoded_bytes());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    (ours && !zombie).then_some(pid)
}

/// Which sandbox a container belongs to and where its state is.
pub fn locate(bundle: &Path, id: &str) -> (String, SandboxPaths) {
    let sandbox_id = Spec::load(bundle)
        .map(|s| s.sandbox_id(id))
        .unwrap_or_else(|_| id.to_string());
    let recorded = std::fs::read_to_string(bundle.join(BUNDLE_STATE_LINK))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_absolute());
    let paths = match recorded {
        Some(root) => SandboxPaths::from_root(root),
        None => {
            let state_dir = config::load(None)
                .map(|l| l.config.state_dir)
                .unwrap_or_else(|_| config::HuskConfig::default().state_dir);
            SandboxPaths::new(&state_dir, &sandbox_id)
        }
    };
    (sandbox_id, paths)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Whether a shim answers on `address`.
pub fn shim_alive(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

fn kill_vmm(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        let gone = match state {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z')),
        };
        if gone {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!("husk-vmm {pid} did not exit within 3 s of SIGKILL");
}

/// Cleans up after container `id` of `bundle`; `shim_address` is the sandbox shim's socket.
pub fn delete(bundle: &Path, id: &str, shim_address: impl Fn(&str) -> String) -> DeleteResponse {
    let (sandbox_id, paths) = locate(bundle, id);
    let address = shim_address(&sandbox_id);
    let pid = std::fs::read_to_string(paths.vmm_pid())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if shim_alive(&address) {
        tracing::debug!("the shim of sandbox {sandbox_id} is alive; leaving its state alone");
    } else {
        if let Some(pid) = live_vmm(&paths) {
            tracing::warn!("killing husk-vmm {pid} of sandbox {sandbox_id} (its shim is gone)");
            kill_vmm(pid);
        }
        if let Err(e) = share::remove_container(&paths, id) {
            tracing::warn!("cleaning up container {id}: {e}");
        }
        if id == sandbox_id || share::is_empty(&paths) {
            if let Err(e) = crate::network::teardown_blocking(paths.root()) {
                tracing::warn!("removing the pod network of sandbox {sandbox_id}: {e}");
            }
            for left in crate::cgroup::remove_recorded(paths.root()) {
                tracing::warn!("removing the pod's cgroup of sandbox {sandbox_id}: {left}");
            }
            if let Err(e) = unmount::unmount_and_remove(paths.root()) {
                tracing::warn!("cleaning up sandbox state {}: {e}", paths.root().display());
            }
        }
        let sock = socket_path(&address);
        if Path::new(sock).exists() {
            let _ = std::fs::remove_file(sock);
        }
    }
    let mut resp = DeleteResponse::new();
    resp.pid = pid;
    resp.exit_status = 128 + libc::SIGKILL as u32;
    resp.exited_at = MessageField::some(now());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, spec: &str, state: Option<&Path>) -> PathBuf {
        let b = dir.join("bundle");
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), spec).unwrap();
        if let Some(s) = state {
            std::fs::write(b.join(BUNDLE_STATE_LINK), s.as_os_str().as_encoded_bytes()).unwrap();
        }
        b
    }

    #[test]
    fn a_dead_sandbox_is_removed_and_a_second_run_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state/sb1");
        std::fs::create_dir_all(root.join("shared/sb1/rootfs")).unwrap();
        std::fs::write(root.join("vmm.pid"), "999999999").unwrap();
        let b = bundle(dir.path(), "{}", Some(&root));
        let dead = dir.path().join("no-shim.sock").display().to_string();
        let r = delete(&b, "sb1", |_| dead.clone());
        assert_eq!(r.exit_status, 137);
        assert!(!root.exists(), "state must be gone");
        let r = delete(&b, "sb1", |_| dead.clone());
        assert_eq!(r.exit_status, 137);
    }

    #[test]
    fn a_pod_container_only_takes_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state/sb1");
        // The share's two views without the mounts (a root-only test has them: share.rs).
        std::fs::create_dir_all(root.join(".share/sb1/rootfs")).unwrap();
        std::fs::create_dir_all(root.join(".share/c1/rootfs")).unwrap();
        std::os::unix::fs::symlink(".share", root.join("shared")).unwrap();
        let spec = r#"{"annotations":{"io.kubernetes.cri.container-type":"container",
                       "io.kubernetes.cri.sandbox-id":"sb1"}}"#;
        let b = bundle(dir.path(), spec, Some(&root));
        let (sb, _) = locate(&b, "c1");
        assert_eq!(sb, "sb1");
        let dead = dir.path().join("none.sock").display().to_string();
        delete(&b, "c1", |_| dead.clone());
        assert!(!root.join("shared/c1").exists());
        assert!(root.join("shared/sb1").exists());
    }

    #[test]
    fn a_live_shim_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state/sb1");
        std::fs::create_dir_all(root.join("shared/sb1")).unwrap();
        let b = bundle(dir.path(), "{}", Some(&root));
        let sock = dir.path().join("shim.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let addr = format!("unix://{}", sock.display());
        delete(&b, "sb1", |_| addr.clone());
        assert!(root.exists());
        assert!(sock.exists());
    }
}
