use super::*;

/// Runs `call` in a child process under `kind`'s filter (Kill mode) and returns how the child
/// ended: `Ok(code)` for an exit, `Err(signal)` for a death by signal.
fn in_child(kind: ThreadKind, call: impl FnOnce() -> i64) -> Result<i32, i32> {
    let bpf = compile(kind, Mode::Kill).unwrap();
    // SAFETY: the child only installs the prepared filter, makes one syscall and _exits: no
    // locks or allocations that another thread of the test binary might hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match seccompiler::apply_filter(&bpf) {
            Ok(()) => i32::from(call() >= 0),
            Err(_) => 99,
        };
        // SAFETY: ending the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        Err(libc::WTERMSIG(status))
    } else {
        Ok(libc::WEXITSTATUS(status))
    }
}

fn sys(nr: i64, a: [u64; 3]) -> i64 {
    // SAFETY: raw syscalls with scalar arguments (or null pointers): at worst they fail.
    unsafe { libc::syscall(nr, a[0], a[1], a[2]) }
}

#[test]
fn every_kind_compiles_in_both_modes() {
    for kind in ThreadKind::ALL {
        for mode in [Mode::Kill, Mode::Log] {
            let bpf = compile(kind, mode).unwrap();
            assert!(bpf.len() > 10, "{kind:?}: {} instructions", bpf.len());
        }
        let list = allow_list(kind).unwrap();
        for banned in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_init_module,
            libc::SYS_bpf,
            libc::SYS_process_vm_writev,
        ] {
            assert!(!list.contains_key(&banned), "{kind:?} allows {banned}");
        }
    }
}

#[test]
fn mode_parses_and_nothing_else() {
    assert_eq!("kill".parse::<Mode>().unwrap(), Mode::Kill);
    assert_eq!("log".parse::<Mode>().unwrap(), Mode::Log);
    assert!("off".parse::<Mode>().unwrap_err().contains("kill or log"));
}

#[test]
fn an_allowed_call_works_under_every_filter() {
    for kind in ThreadKind::ALL {
        assert_eq!(
            in_child(kind, || sys(libc::SYS_getpid, [0; 3])),
            Ok(1),
            "{kind:?}"
        );
    }
}

#[test]
fn a_precompiled_filter_is_the_one_installed() {
    // This process sets no mode, so nothing here installs the filters compiled now; the child
    // sets one and installs the vCPU's from them.
    precompile_with(Mode::Kill).unwrap();
    // SAFETY: the child sets a OnceLock, installs a filter compiled before the fork, makes one
    // syscall and _exits: no locks or allocations another thread might hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = match enforce(Mode::Kill).and_then(|()| install(ThreadKind::Vcpu)) {
            Ok(()) => i32::from(sys(libc::SYS_execve, [0; 3]) >= 0),
            Err(_) => 99,
        };
        // SAFETY: ending the child without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "status {status:#x}"
    );
}

#[test]
fn a_call_outside_the_list_kills_the_process_with_sigsys() {
    let sigsys = Err(libc::SIGSYS);
    for kind in ThreadKind::ALL {
        let null = 0u64;
        assert_eq!(in_child(kind, || sys(libc::SYS_execve, [null; 3])), sigsys);
        assert_eq!(in_child(kind, || sys(libc::SYS_ptrace, [null; 3])), sigsys);
        assert_eq!(in_child(kind, || sys(libc::SYS_mount, [null; 3])), sigsys);
        let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0];
        assert_eq!(in_child(kind, || sys(libc::SYS_socket, inet)), sigsys);
        // An ioctl no thread makes (TIOCSTI: typing into a terminal).
        let tiocsti = [0, libc::TIOCSTI, 0];
        assert_eq!(in_child(kind, || sys(libc::SYS_ioctl, tiocsti)), sigsys);
        // Executable memory.
        let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        assert_eq!(
            in_child(kind, || sys(libc::SYS_mprotect, [0, 4096, prot])),
            sigsys,
            "{kind:?}"
        );
    }
}

#[test]
fn argument_filters_let_the_used_values_through() {
    // vsock: a Unix socket is allowed where an inet one is not.
    let unix = [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0];
    assert_eq!(
        in_child(ThreadKind::Vsock, || sys(libc::SYS_socket, unix)),
        Ok(1)
    );
    // vCPU: KVM_RUN on a bad descriptor fails with EBADF instead of being killed.
    let run = [u64::MAX >> 33, vcpu::ioctls()[0], 0];
    assert_eq!(
        in_child(ThreadKind::Vcpu, || sys(libc::SYS_ioctl, run)),
        Ok(0)
    );
    // The main thread reads the IOAPIC (EBADF here); a vCPU may not.
    let irqchip = [u64::MAX >> 33, main_thread::get_irqchip_ioctl(), 0];
    assert_eq!(
        in_child(ThreadKind::Main, || sys(libc::SYS_ioctl, irqchip)),
        Ok(0)
    );
    assert_eq!(
        in_child(ThreadKind::Vcpu, || sys(libc::SYS_ioctl, irqchip)),
        Err(libc::SIGSYS)
    );
    // Only a vCPU may run a guest.
    assert_eq!(
        in_child(ThreadKind::Fs, || sys(libc::SYS_ioctl, run)),
        Err(libc::SIGSYS)
    );
}
