//! What every thread of husk-vmm needs, whatever its job: memory, locks and channels, time,
//! its own end, and a line on stderr.

use super::rules::{Always, Arg, RuleError, RuleSet};

const ALWAYS: Always = &[
    (libc::SYS_brk, "the allocator grows the main heap"),
    (
        libc::SYS_munmap,
        "the allocator returns large blocks; a thread's stack at exit",
    ),
    (
        libc::SYS_mremap,
        "the allocator grows large blocks in place",
    ),
    (
        libc::SYS_madvise,
        "the allocator returns freed pages (MADV_DONTNEED)",
    ),
    (
        libc::SYS_futex,
        "mutexes, condition variables, channels and joins",
    ),
    (libc::SYS_sched_yield, "spin loops in locks and channels"),
    (
        libc::SYS_clock_gettime,
        "Instant and SystemTime when the vDSO falls back",
    ),
    (libc::SYS_clock_nanosleep, "thread::sleep"),
    (libc::SYS_nanosleep, "thread::sleep on older libcs"),
    (libc::SYS_getrandom, "hash map keys"),
    (
        libc::SYS_write,
        "warnings and errors on stderr; eventfd kicks",
    ),
    (libc::SYS_close, "dropping descriptors"),
    (
        libc::SYS_rt_sigreturn,
        "returning from the vCPU kick handler",
    ),
    (
        libc::SYS_rt_sigprocmask,
        "thread exit and abort block signals",
    ),
    (
        libc::SYS_sigaltstack,
        "a thread's exit removes its signal stack",
    ),
    (libc::SYS_gettid, "abort names the thread it signals"),
    (libc::SYS_getpid, "abort and pthread_kill name the process"),
    (libc::SYS_exit, "a thread's end"),
    (libc::SYS_exit_group, "the process's end"),
];

/// Adds the common part.
pub fn add(set: &mut RuleSet) -> Result<(), RuleError> {
    set.always(ALWAYS);
    // Anonymous memory for the allocator and thread stacks, never executable: nothing in
    // husk-vmm generates code.
    set.when(libc::SYS_mmap, &[Arg::NoneOf(2, libc::PROT_EXEC as u64)])?;
    set.when(
        libc::SYS_mprotect,
        &[Arg::NoneOf(2, libc::PROT_EXEC as u64)],
    )?;
    // A panic that aborts raises SIGABRT on its own thread; the process dies either way, this
    // way with the right signal.
    set.when(libc::SYS_tgkill, &[Arg::Eq(2, libc::SIGABRT as u64)])?;
    Ok(())
}
