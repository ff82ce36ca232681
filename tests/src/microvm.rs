//! Booting a guest and watching its serial console for a marker line.
//!
//! [`qemu_microvm`] builds the command for QEMU's `microvm` machine, the reference VMM husk is
//! compared against; [`watch_boot`] runs any VMM command whose serial console is its stdout and
//! times the marker.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::{kill_and_reap, kill_with_parent, shell_code};

/// The marker line husk-test-init prints once it runs.
pub const TEST_INIT_MARKER: &str = "HUSK-TEST-INIT ready";

/// A guest to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// ELF vmlinux (with a PVH note, which QEMU needs for ELF kernels).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Extra kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
}

/// QEMU `-M microvm` with KVM, serial console on stdout, and the guest's reboot ending QEMU.
///
/// The guest gets `reboot=t` (triple fault): microvm has no i8042, so `reboot=k` would spin.
pub fn qemu_microvm(spec: &GuestSpec) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off",
        "-enable-kvm",
        "-cpu",
        "host",
    ])
    .args([
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &spec.memory_mib.to_string(),
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&spec.kernel)
    .arg("-initrd")
    .arg(&spec.initramfs)
    .arg("-append")
    .arg(format!("console=ttyS0 reboot=t panic=-1 {}", spec.cmdline).trim_end());
    cmd
}

/// `husk-vmm` for the same guest: writes its VM configuration into `dir` and returns the
/// command. The serial console goes to the VMM's stdout, like QEMU's `-serial stdio`.
pub fn husk_vmm(
    vmm: &Path,
    spec: &GuestSpec,
    dir: &Path,
    control_socket: Option<&Path>,
) -> std::io::Result<Command> {
    let config = serde_json::json!({
        "kernel": spec.kernel,
        "initramfs": spec.initramfs,
        "extra_cmdline": spec.cmdline,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "serial_log": "/proc/self/fd/1",
        "control_socket": control_socket,
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    let mut cmd = Command::new(vmm);
    cmd.arg("--config").arg(path);
    Ok(cmd)
}

/// A VMM process whose console is read line by line, for tests that act while the guest runs.
#[derive(Debug)]
pub struct RunningVm {
    child: std::process::Child,
    started: Instant,
    lines: mpsc::Receiver<(String, Instant)>,
    /// Everything read so far.
    pub console: String,
}

impl RunningVm {
    /// Spawns `cmd` with its stdout and stderr captured.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kill_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let (tx, lines) = mpsc::channel();
        let streams: Vec<Box<dyn std::io::Read + Send>> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send((line, Instant::now())).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(RunningVm {
            child,
            started,
            lines,
            console: String::new(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads console lines until one contains `needle`; returns it, or `None` at the deadline or
    /// when the output ends.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_timed(needle, timeout).map(|(line, _)| line)
    }

    /// Like [`RunningVm::wait_for`], with the time from spawning until the line was read.
    pub fn wait_for_timed(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Option<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let (line, at) = self.lines.recv_timeout(wait).ok()?;
            self.console.push_str(&line);
            self.console.push('\n');
            if line.contains(needle) {
                return Some((line, at - self.started));
            }
        }
    }

    /// Sends `signal` to the VMM.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped (we own the Child).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits for the VMM to exit (shell-style code), killing it at the deadline (`None`).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let status = crate::process::wait_until(&mut self.child, Instant::now() + timeout)
            .ok()
            .flatten();
        if status.is_none() {
            let _ = kill_and_reap(&mut self.child, false);
        }
        while let Ok((line, _)) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.console.push_str(&line);
            self.console.push('\n');
        }
        status.map(shell_code)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill_and_reap(&mut self.child, false);
        }
    }
}

/// What a watched boot produced.
#[derive(Debug, Clone)]
pub struct BootResult {
    /// Time from spawning the VMM until the marker line was read, if it was.
    pub to_marker: Option<Duration>,
    /// The marker line itself.
    pub marker_line: Option<String>,
    /// The VMM's exit code (128 + N for signal N); `None` when it was killed at the deadline.
    pub exit_code: Option<i32>,
    /// Everything the console printed.
    pub console: String,
}

/// Spawns `cmd` (its stdout is the guest console), records when `marker` appears, and waits for
/// the VMM to exit; kills it at `timeout`.
pub fn watch_boot(cmd: Command, marker: &str, timeout: Duration) -> std::io::Result<BootResult> {
    let deadline = Instant::now() + timeout;
    let mut vm = RunningVm::spawn(cmd)?;
    let found = vm.wait_for_timed(marker, timeout);
    let exit_code = vm.wait(deadline.saturating_duration_since(Instant::now()));
    Ok(BootResult {
        to_marker: found.as_ref().map(|(_, at)| *at),
        marker_line: found.map(|(line, _)| line.trim().to_string()),
        exit_code,
        console: std::mem::take(&mut vm.console),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_time_and_exit_code_are_reported() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo booting; echo 'x HUSK-TEST-INIT ready kernel=k' ; echo bye >&2; exit 3",
        ]);
        let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(10)).unwrap();
        assert!(r.to_marker.is_some());
        assert_eq!(
            r.marker_line.as_deref(),
            Some("x HUSK-TEST-INIT ready kernel=k")
        );
        assert_eq!(r.exit_code, Some(3));
        assert!(r.console.contains("bye"));
    }

    #[test]
    fn a_hung_vmm_is_killed_at_the_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_millis(300)).unwrap();
        assert!(r.to_marker.is_none() && r.exit_code.is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn qemu_command_carries_the_guest() {
        let spec = GuestSpec {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "quiet".into(),
            vcpus: 2,
            memory_mib: 128,
        };
        let args: Vec<String> = qemu_microvm(&spec)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-smp 2 -m 128"), "{joined}");
        assert!(joined.contains("-kernel /k -initrd /i"), "{joined}");
        assert!(
            args.last().unwrap().ends_with("reboot=t panic=-1 quiet"),
            "{joined}"
        );
    }
}
