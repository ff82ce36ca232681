//! The `start` action: find or launch the shim daemon for this task and print its address.
//!
//! containerd 1.6/1.7 read the combined stdout and stderr of this process as the address, so
//! nothing but the address is printed on success. A pod's containers (CRI annotation
//! `container-type=container`) join the shim of their sandbox id; every other task (a pod
//! sandbox, a plain `ctr run`, a sandbox API pod whose bundle has no config.json) gets a daemon
//! of its own, unless one already answers on the computed socket (containerd re-running
//! `start`). The daemon is this binary again with
//! `-socket`; it tells its parent it serves by closing its stdout (containerd-shim's
//! `signal_server_started`). The `address` file in the bundle is how containerd finds the shim
//! again after a restart.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim::Flags;

use crate::cleanup::shim_alive;
use crate::spec::Spec;

/// How long the daemon may take to start serving.
const SERVE_TIMEOUT: Duration = Duration::from_secs(10);

fn write_address(bundle: &Path, address: &str) -> Result<(), String> {
    std::fs::write(bundle.join("address"), address)
        .map_err(|e| format!("writing {}/address: {e}", bundle.display()))
}

/// Runs the start action in `bundle` (the working directory containerd gave us).
pub fn start(flags: &Flags, bundle: &Path) -> Result<String, String> {
    if flags.id.is_empty() || flags.namespace.is_empty() {
        return Err("start needs -id and -namespace".into());
    }
    husk_protocol::ids::validate(&flags.id).map_err(|e| format!("task id: {e}"))?;
    // containerd 2.x's sandbox API starts the pod's shim on a bundle without config.json: the
    // sandbox itself, a group of its own.
    let group = if bundle.join("config.json").exists() {
        Spec::load(bundle)
            .map_err(|e| e.to_string())?
            .sandbox_id(&flags.id)
    } else {
        flags.id.clone()
    };
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    if shim_alive(&address) {
        write_address(bundle, &address)?;
        return Ok(address);
    }
    if group != flags.id {
        return Err(format!(
            "the shim of sandbox {group} does not answer on {address}: start the sandbox first"
        ));
    }
    let path = address.trim_start_matches("unix://");
    if Path::new(path).exists() {
        let _ = std::fs::remove_file(path);
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding the shim binary: {e}"))?;
    let mut cmd = Command::new(&exe);
    cmd.current_dir(bundle)
        .args(["-namespace", &flags.namespace, "-id", &flags.id])
        .args(["-address", &flags.address, "-socket", &address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    if flags.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting the shim daemon {}: {e}", exe.display()))?;
    // The daemon closes its stdout once it serves (or dies): wait for that, bounded.
    if let Some(mut out) = child.stdout.take() {
        let reader = std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let deadline = Instant::now() + SERVE_TIMEOUT;
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !shim_alive(&address) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the shim daemon exited ({status}) before serving on {address}; its log is in \
                 containerd's log"
            ));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(format!(
                "the shim daemon did not serve on {address} within {SERVE_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    write_address(bundle, &address)?;
    Ok(address)
}
