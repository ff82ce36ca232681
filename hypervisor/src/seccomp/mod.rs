//! husk-vmm's seccomp allow-lists, one per kind of thread, built with `seccompiler`.
//!
//! Every thread installs its kind's filter itself, before it runs anything the guest drives:
//! the vCPUs before their first KVM_RUN, the device workers when they start (at setup, before
//! the guest exists), the control thread before its first accept, and the main thread once it
//! has started all the others. No filter allows creating a thread or a process, so the set of
//! threads is fixed once the VM runs. A filter is per thread (no TSYNC): a thread's list says
//! what that thread needs, and nothing it does not.
//!
//! The lists are data: one module per thread kind, each syscall with the reason it is needed.
//! [`common`] holds what every Rust thread needs (memory, futexes, its own exit). `ioctl` is
//! allowed only for the requests each kind issues (KVM, tap, `FIONBIO`), `socket` only for
//! `AF_UNIX`, and `mmap`/`mprotect` never with `PROT_EXEC`.
//!
//! A syscall outside the list kills the whole process (`SECCOMP_RET_KILL_PROCESS`); the shim
//! sees husk-vmm end on SIGSYS. `husk-vmm --seccomp=log` logs instead (to the kernel's audit
//! log): a debugging aid for finding a missing entry, never the default.

mod balloon;
mod common;
mod control;
mod fs;
mod main_thread;
mod net;
mod rules;
mod vcpu;
mod vsock;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

pub use rules::RuleError;

/// The kinds of thread in husk-vmm, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread: the epoll loop over the stop eventfd, signals and control requests,
    /// and the shutdown that joins every other thread.
    Main,
    /// [`ThreadKind::Main`] of a VM configured with a `snapshot_dir`: it also writes the
    /// snapshot.
    MainWithSnapshots,
    /// The control socket's thread: accepts one client at a time and relays its request.
    Control,
    /// A vCPU thread: KVM_RUN and the port and MMIO devices it dispatches to, the serial
    /// console among them.
    Vcpu,
    /// [`ThreadKind::Vcpu`] of a VM configured with a `snapshot_dir`: it also reads its own
    /// vCPU's state when the VM is snapshotted.
    VcpuWithSnapshots,
    /// The vsock device's worker: the queues and the host's Unix sockets.
    Vsock,
    /// A virtio-net device's worker: the queues and the tap.
    Net,
    /// A virtio-fs device's worker: the queues and the passthrough file server.
    Fs,
    /// The virtio-balloon device's worker: the queues and dropping the pages the guest gives
    /// back.
    Balloon,
}

impl ThreadKind {
    /// Every kind, for tests and for `husk check`.
    pub const ALL: [ThreadKind; 9] = [
        ThreadKind::Main,
        ThreadKind::MainWithSnapshots,
        ThreadKind::Control,
        ThreadKind::Vcpu,
        ThreadKind::VcpuWithSnapshots,
        ThreadKind::Vsock,
        ThreadKind::Net,
        ThreadKind::Fs,
        ThreadKind::Balloon,
    ];
}

/// What a syscall outside the allow-list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The process is killed (SIGSYS): the only mode for production.
    Kill,
    /// The call is allowed and logged by the kernel: for finding a missing entry.
    Log,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Mode::Kill),
            "log" => Ok(Mode::Log),
            other => Err(format!("unknown seccomp mode {other:?} (kill or log)")),
        }
    }
}

/// Errors of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule in a list is malformed (a bug in the lists).
    #[error("the {0:?} seccomp filter: {1}")]
    Rule(ThreadKind, #[source] RuleError),
    /// seccompiler refused the filter or its compilation.
    #[error("compiling the {0:?} seccomp filter: {1}")]
    Compile(ThreadKind, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, #[source] seccompiler::Error),
    /// The process chose a mode twice.
    #[error("the seccomp mode is already set")]
    ModeSet,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Makes every later [`install`] in this process install filters with `mode`. The `husk-vmm`
/// binary calls this first thing; a process that never does (the library's unit tests, the
/// fuzzers) runs unfiltered.
pub fn enforce(mode: Mode) -> Result<(), SeccompError> {
    MODE.set(mode).map_err(|_| SeccompError::ModeSet)
}

/// Whether this process enforces filters (and how).
pub fn mode() -> Option<Mode> {
    MODE.get().copied()
}

/// Every kind's filter, compiled once by [`precompile`], with the mode they were compiled for.
static COMPILED: OnceLock<(Mode, Vec<(ThreadKind, BpfProgram)>)> = OnceLock::new();

/// Compiles every kind's filter for the process's mode ahead of the threads that install them,
/// so that a thread's start (a vCPU's, right before its first KVM_RUN) only installs its
/// filter. husk-vmm does it while its loader thread reads the guest images. Without it each
/// thread compiles its own filter at [`install`]; with no mode set it does nothing.
pub fn precompile() -> Result<(), SeccompError> {
    match mode() {
        Some(mode) => precompile_with(mode),
        None => Ok(()),
    }
}

fn precompile_with(mode: Mode) -> Result<(), SeccompError> {
    let all = ThreadKind::ALL
        .iter()
        .map(|&kind| compile(kind, mode).map(|bpf| (kind, bpf)))
        .collect::<Result<Vec<_>, _>>()?;
    // A second call finds the same filters in place.
    let _ = COMPILED.set((mode, all));
    Ok(())
}

/// Installs `kind`'s filter on the calling thread, if the process enforces filters: the one
/// [`precompile`] made for the process's mode, or one compiled now.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(mode) = mode() else {
        return Ok(());
    };
    let compiled = COMPILED
        .get()
        .filter(|(m, _)| *m == mode)
        .and_then(|(_, all)| all.iter().find(|(k, _)| *k == kind));
    match compiled {
        Some((_, bpf)) => {
            seccompiler::apply_filter(bpf).map_err(|e| SeccompError::Install(kind, e))
        }
        None => install_with(kind, mode),
    }
}

/// Installs `kind`'s filter on the calling thread with `mode`, unconditionally.
pub fn install_with(kind: ThreadKind, mode: Mode) -> Result<(), SeccompError> {
    let bpf = compile(kind, mode)?;
    seccompiler::apply_filter(&bpf).map_err(|e| SeccompError::Install(kind, e))
}

/// `kind`'s allow-list: syscall number to the rules under which it is allowed (an empty list:
/// always).
pub fn allow_list(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut list = rules::RuleSet::default();
    let built = (|| {
        common::add(&mut list)?;
        match kind {
            ThreadKind::Main => main_thread::add(&mut list),
            ThreadKind::MainWithSnapshots => main_thread::add_snapshots(&mut list),
            ThreadKind::VcpuWithSnapshots => vcpu::add_snapshots(&mut list),
            ThreadKind::Control => control::add(&mut list),
            ThreadKind::Vcpu => vcpu::add(&mut list),
            ThreadKind::Vsock => vsock::add(&mut list),
            ThreadKind::Net => net::add(&mut list),
            ThreadKind::Fs => fs::add(&mut list),
            ThreadKind::Balloon => balloon::add(&mut list),
        }
    })();
    built.map_err(|e| SeccompError::Rule(kind, e))?;
    Ok(list.into_map())
}

/// `kind`'s filter as a BPF program.
pub fn compile(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, SeccompError> {
    let mismatch = match mode {
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(
        allow_list(kind)?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Compile(kind, e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind, e))
}

#[cfg(test)]
mod tests;
