//! The real [`Probe`]: `/proc`, `/sys/module`, `/dev/kvm` ioctls, PATH, the shim's config
//! loader, and tools run bounded in time (ctr, crictl).

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_protocol::config::{ConfigError, Loaded};

use super::{KvmFacts, Probe, ToolRun};

/// `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// `_IO(KVMIO, 0x03)`.
const KVM_CHECK_EXTENSION: libc::c_ulong = 0xAE03;
/// The capabilities husk-vmm relies on (linux/kvm.h numbers).
const EXTENSIONS: [(&str, libc::c_ulong); 3] = [
    ("KVM_CAP_IRQCHIP", 0),
    ("KVM_CAP_IRQFD", 32),
    ("KVM_CAP_IOEVENTFD", 36),
];

/// This host.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl Probe for System {
    fn cpuinfo(&self) -> std::io::Result<String> {
        std::fs::read_to_string("/proc/cpuinfo")
    }

    fn module_loaded(&self, name: &str) -> bool {
        Path::new("/sys/module").join(name).exists()
    }

    fn kvm(&self) -> std::io::Result<KvmFacts> {
        let f = OpenOptions::new().read(true).write(true).open("/dev/kvm")?;
        let fd = f.as_raw_fd();
        // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; `fd` is an
        // open /dev/kvm descriptor owned by `f`, alive for the call.
        let api_version = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION, 0) };
        if api_version < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let extensions = EXTENSIONS
            .iter()
            .map(|(name, cap)| {
                // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value and returns
                // an int; `fd` is alive (owned by `f`).
                let r = unsafe { libc::ioctl(fd, KVM_CHECK_EXTENSION, *cap) };
                (*name, r > 0)
            })
            .collect();
        Ok(KvmFacts {
            api_version,
            extensions,
        })
    }

    fn open_read(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::File::open(path)?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(())
    }

    fn open_rw(&self, path: &Path) -> std::io::Result<()> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(drop)
    }

    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn find_on_path(&self, name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| {
                std::fs::metadata(p)
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
    }

    fn husk_config(&self, explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
        husk_protocol::config::load(explicit)
    }

    fn run(&self, program: &Path, args: &[&str]) -> Result<ToolRun, String> {
        run_bounded(program, args, RUN_BOUND)
    }

    fn fallback_bindir(&self) -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
    }
}

/// How long a tool `husk check` runs (ctr, crictl) may take.
const RUN_BOUND: Duration = Duration::from_secs(15);

/// Runs `program`, killing it at `bound`; stdout and stderr are read on their own threads so a
/// chatty tool cannot block on a full pipe.
fn run_bounded(program: &Path, args: &[&str], bound: Duration) -> Result<ToolRun, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + bound;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not finish in {bound:?}", program.display()));
            }
            Err(e) => return Err(format!("waiting for {}: {e}", program.display())),
        }
    };
    Ok(ToolRun {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_runs_bounded_with_its_code_and_output() {
        let sh = Path::new("/bin/sh");
        assert_eq!(
            run_bounded(sh, &["-c", "echo out; echo err >&2; exit 3"], RUN_BOUND),
            Ok(ToolRun {
                code: 3,
                stdout: "out\n".into(),
                stderr: "err\n".into()
            })
        );
        let slow = run_bounded(sh, &["-c", "sleep 5"], Duration::from_millis(200));
        assert!(slow.unwrap_err().contains("did not finish"));
        assert!(run_bounded(Path::new("/no/such/tool"), &[], RUN_BOUND).is_err());
    }
}
