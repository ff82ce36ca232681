//! Run a command where `/dev/kvm` is hardware virtualization.
//!
//! On a VT-x/AMD-V host the command runs natively. Elsewhere (PVM, no KVM) it runs inside the
//! test host: a QEMU TCG guest (`-cpu max` emulates AMD SVM) booting Debian's stock kernel with
//! `kvm_amd` loaded. The test host sees this machine's root filesystem read-only over virtio-9p
//! with a tmpfs overlay on top, so build outputs and installed packages (containerd, runc, CNI
//! plugins, QEMU) are all there; the directories named with `--rw` are shared writable.

mod assets;
mod kvm_trace;
mod native;
mod nested;

use std::path::PathBuf;
use std::time::Duration;

pub use assets::{prepare_assets, Assets};

use crate::hostkind::{detect, HostKind, SysProbe};

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// A shell command line (run with `/bin/sh -c`).
    pub command: String,
    /// Working directory (the same path inside the test host).
    pub cwd: PathBuf,
    /// Environment passed to the command.
    pub env: Vec<(String, String)>,
    /// Host directories the command may write to (shared writable at the same path).
    pub rw_dirs: Vec<PathBuf>,
    /// Wall-clock limit for the whole run, test host boot included.
    pub timeout: Duration,
    /// Test host RAM.
    pub memory_mib: u32,
    /// Test host vCPUs.
    pub cpus: u32,
    /// Print the test host's console after the run.
    pub verbose: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Exit code of the command (128 + N for signal N).
    pub code: i32,
    /// Where the command ran.
    pub mode: Mode,
    /// Seconds from starting QEMU until the test host was ready to run the command.
    pub ready_secs: Option<f64>,
}

/// Where the command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Directly on this host.
    Native,
    /// Inside the nested QEMU test host.
    Nested,
}

impl Mode {
    /// The name used in benchmark records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Nested => "nested",
        }
    }
}

/// Why a run failed (as opposed to the command failing, which is an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    /// The deadline passed; the command (and QEMU) were killed.
    #[error("command timed out after {0:?} and was killed{1}")]
    Timeout(Duration, String),
    /// The test host stopped answering (no heartbeat for this long); it was killed.
    #[error(
        "the test host wedged: no heartbeat from its userspace for {0:?}, so it was killed{1}"
    )]
    Wedged(Duration, String),
    /// Interrupted by a signal; everything was stopped.
    #[error("interrupted; the command was stopped{0}")]
    Interrupted(String),
    /// The test host ended without reporting the command's exit code.
    #[error("the test host stopped without reporting an exit code (QEMU {status}); console tail:\n{console}")]
    NoExitCode { status: String, console: String },
    /// Preparing the kernel and initramfs failed.
    #[error("preparing the test host: {0}")]
    Assets(String),
    /// An I/O error around the run.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// husk-testhost's exit code when the test host itself failed (it wedged, or its kernel died
/// without reporting the command's exit): EX_TEMPFAIL, a fault of the environment, not of the
/// command, so a caller may run the command again.
pub const EXIT_TESTHOST_FAILED: u8 = 75;

impl TestHostError {
    /// husk-testhost's exit code for this error: 124 when the command's own bound passed (as
    /// `timeout(1)`), [`EXIT_TESTHOST_FAILED`] when the test host failed under it, 130 when
    /// interrupted, 125 for everything else (husk-testhost could not run it).
    pub fn exit_code(&self) -> u8 {
        match self {
            TestHostError::Timeout(..) => 124,
            TestHostError::Wedged(..) | TestHostError::NoExitCode { .. } => EXIT_TESTHOST_FAILED,
            TestHostError::Interrupted(_) => 130,
            TestHostError::Assets(_) | TestHostError::Io { .. } => 125,
        }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestHostError {
    let what = what.into();
    move |source| TestHostError::Io { what, source }
}

/// Which mode this host calls for: `HUSK_TESTHOST=native|nested` overrides the module check.
pub fn choose_mode(kind: HostKind, forced: Option<&str>) -> Mode {
    match forced {
        Some("native") => Mode::Native,
        Some("nested") => Mode::Nested,
        _ if kind.runs_natively() => Mode::Native,
        _ => Mode::Nested,
    }
}

/// Runs `spec` natively or in the test host, as this host requires.
pub fn run(spec: &RunSpec) -> Result<Outcome, TestHostError> {
    let kind = detect(&SysProbe::system());
    let forced = std::env::var("HUSK_TESTHOST").ok();
    match choose_mode(kind, forced.as_deref()) {
        Mode::Native => native::run(spec),
        Mode::Nested => {
            let assets = prepare_assets().map_err(|e| TestHostError::Assets(format!("{e:#}")))?;
            nested::run(spec, &assets)
        }
    }
}

/// Set by SIGINT/SIGTERM so a run can stop its children and clean up before exiting.
pub(crate) static INTERRUPTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`INTERRUPTED`] instead of killing the harness outright.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: on_signal only stores to an atomic, which is async-signal-safe; the handler
        // address stays valid for the life of the process.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostkind::Vendor;

    #[test]
    fn only_a_failed_test_host_exits_75() {
        let d = Duration::from_secs(120);
        let code = |e: TestHostError| e.exit_code();
        assert_eq!(code(TestHostError::Timeout(d, String::new())), 124);
        assert_eq!(code(TestHostError::Wedged(d, String::new())), 75);
        let died = TestHostError::NoExitCode {
            status: "exit status: 0".into(),
            console: String::new(),
        };
        assert_eq!(code(died), EXIT_TESTHOST_FAILED);
        assert_eq!(code(TestHostError::Interrupted(String::new())), 130);
        assert_eq!(code(TestHostError::Assets("no kernel".into())), 125);
    }

    #[test]
    fn hardware_runs_natively_everything_else_nested() {
        assert_eq!(
            choose_mode(HostKind::Hardware(Vendor::Intel), None),
            Mode::Native
        );
        assert_eq!(choose_mode(HostKind::Pvm, None), Mode::Nested);
        assert_eq!(choose_mode(HostKind::NoKvm, None), Mode::Nested);
        assert_eq!(choose_mode(HostKind::Pvm, Some("native")), Mode::Native);
        assert_eq!(
            choose_mode(HostKind::Hardware(Vendor::Amd), Some("nested")),
            Mode::Nested
        );
    }
}
