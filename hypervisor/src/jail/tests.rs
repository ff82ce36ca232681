use super::*;
use husk_protocol::vm_config::VsockConfig;

fn config(vsock: Option<&str>, control: Option<&str>) -> VmConfig {
    let mut c = VmConfig::from_json(r#"{"kernel":"/k"}"#).unwrap();
    c.vsock = vsock.map(|s| VsockConfig {
        guest_cid: 3,
        socket: s.into(),
        allowed_guest_ports: vec![],
    });
    c.control_socket = control.map(Into::into);
    c
}

#[test]
fn the_plan_holds_each_socket_directory_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().canonicalize().unwrap();
    let (v, c) = (d.join("vsock"), d.join("ctl"));
    let plan = JailPlan::for_config(&config(v.to_str(), c.to_str()));
    assert_eq!(plan.dirs(), std::slice::from_ref(&d));
    let other = t.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let plan = JailPlan::for_config(&config(v.to_str(), other.join("ctl").to_str()));
    assert_eq!(plan.dirs(), [d.clone(), d.join("other")]);
    assert!(JailPlan::for_config(&config(None, None)).dirs().is_empty());
}

#[test]
fn a_second_thread_is_refused() {
    let plan = JailPlan { dirs: vec![] };
    let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(10)));
    let e = enter(&plan).unwrap_err().to_string();
    assert!(
        e.contains("threads; it must enter with its main thread alone"),
        "{e}"
    );
}

#[test]
fn a_joined_thread_does_not_count() {
    // In a child, single-threaded like husk-vmm's setup: helper threads come and go, and each
    // time they are joined the process counts as alone (within the settle time).
    let code = in_child(|| {
        for i in 0..200 {
            std::thread::spawn(|| ()).join().unwrap();
            alone(THREADS_SETTLE).map_err(|e| format!("after joined thread {i}: {e}"))?;
        }
        Ok(())
    });
    assert_eq!(code, 0);
}

/// Runs `body` in a forked child (single-threaded, as husk-vmm is when it enters the jail) and
/// returns its exit code; the child prints what went wrong.
fn in_child(body: impl FnOnce() -> Result<(), String>) -> i32 {
    // SAFETY: the child runs `body` and _exits; glibc keeps malloc usable after fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match body() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("child: {e}");
                1
            }
        };
        // SAFETY: ending the child without the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    libc::WEXITSTATUS(status)
}

fn names(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
#[ignore = "needs root (mount namespaces); run by make unit as root"]
fn the_jail_holds_the_socket_directory_and_its_own_proc_only() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().canonicalize().unwrap();
    let sock = dir.join("vsock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("f"), b"x").unwrap();
    let share_fd = File::open(share.path()).unwrap();
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let plan = JailPlan::for_config(&config(sock.to_str(), None));
    let code = in_child(move || {
        enter(&plan).map_err(|e| e.to_string())?;
        limit_resources().map_err(|e| e.to_string())?;
        let top = names("/");
        let first = dir.components().nth(1).unwrap();
        let want = {
            let mut w = vec![
                first.as_os_str().to_string_lossy().to_string(),
                "proc".into(),
            ];
            w.sort();
            w.dedup();
            w
        };
        if top != want {
            return Err(format!("/ holds {top:?}, want {want:?}"));
        }
        if names("/proc") != ["self"] {
            return Err(format!("/proc holds {:?}", names("/proc")));
        }
        if std::path::Path::new("/etc/passwd").exists() {
            return Err("the host's /etc is visible".into());
        }
        // The socket is the host's inode: connecting works from inside.
        std::os::unix::net::UnixStream::connect(&sock).map_err(|e| format!("connect: {e}"))?;
        // The share, through the descriptor opened before the jail.
        let through = format!("/proc/self/fd/{}/./f", share_fd.as_raw_fd());
        let got = std::fs::read(&through).map_err(|e| format!("{through}: {e}"))?;
        if got != b"x" {
            return Err("the share's file reads wrong".into());
        }
        if std::fs::read_link("/proc/self/ns/mnt").ok() == Some(host_mnt.clone()) {
            return Err("still in the host's mount namespace".into());
        }
        if std::fs::write("/new", b"x").is_ok() {
            return Err("the jail's root is writable".into());
        }
        Ok(())
    });
    drop(listener);
    assert_eq!(code, 0, "see the child's message above");
    // Nothing of the jail shows on the host.
    assert_eq!(names(t.path().to_str().unwrap()), ["vsock"]);
}
