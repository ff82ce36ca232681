//! husk-vmm's virtio-fs end to end: a real guest (the test init in `husk.test=fs:<tag>` mode)
//! mounts a host directory with `mount -t virtiofs`, reads a file the host wrote, writes one the
//! host then reads, sees a file the host changed while it ran, and sees a tmpfs and a bind
//! mount the host made under the share after the guest mounted it (as the shim mounts container
//! root file systems under `<state>/shared`).
//!
//! The test moves its thread into a private mount namespace before starting the VMM, so the
//! VMM (its child) sees the test's mounts and nothing leaks to the host's mount table.

use std::ffi::CString;
use std::path::Path;
use std::time::Duration;

use husk_tests::e2e;
use husk_tests::microvm::{
    self, husk_vmm_with_fs, FsShareOptions, GuestSpec, RunningVm, VmmOptions, TEST_INIT_MARKER,
};
use husk_tests::process::thread_busy;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
const TAG: &str = "husk";
/// What the guest writes (tests/guest-init/src/fs.rs `GUEST_TEXT`).
const GUEST_TEXT: &str = "written by the guest";

fn private_mount_namespace() {
    // SAFETY: unshare(2) with namespace flags only; no memory is passed.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let root = CString::new("/").unwrap();
    // SAFETY: a valid path; null source, type and data are allowed for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "make / private: {}", std::io::Error::last_os_error());
}

/// A mount that is detached when dropped.
struct Mounted(CString);

impl Mounted {
    fn new(source: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) -> Mounted {
        let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let (s, t, f) = (c(source), c(target), CString::new(fstype).unwrap());
        // SAFETY: valid NUL-terminated strings that outlive the call; no data.
        let rc =
            unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
        assert_eq!(
            rc,
            0,
            "mount on {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
        Mounted(t)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // SAFETY: a valid path string.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Waits for the guest's line for step `name`, which must say ok. A step that never comes
/// fails with the VMM's queue state (`queues` on its control socket), which tells a request
/// the device never completed from an interrupt the guest never took from a guest that asked
/// for nothing more, and with how busy each VMM thread is (a vCPU spinning or idle).
fn step(vm: &mut RunningVm, control: &Path, name: &str) -> String {
    let needle = format!("HUSK-TEST-INIT fs {name} ");
    let line = vm.wait_for(&needle, STEP_TIMEOUT);
    let line = line.unwrap_or_else(|| {
        let queues = microvm::control(control, "queues\n").unwrap_or_else(|e| e.to_string());
        let busy = thread_busy(vm.pid(), Duration::from_secs(2));
        panic!(
            "no `fs {name}` line; husk-vmm: {queues}; its threads: {busy}\n{}",
            vm.console
        )
    });
    assert!(
        line.contains(&format!("fs {name} ok")),
        "step {name}: {line}\n{}",
        vm.console
    );
    line
}

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn guest_reads_writes_and_sees_host_changes_and_later_mounts() {
    let env = e2e::require();
    private_mount_namespace();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("host-wrote.txt"), "written by the host\n").unwrap();
    std::fs::write(shared.join("changing.txt"), "v1\n").unwrap();
    std::fs::create_dir(shared.join("late")).unwrap();
    std::fs::create_dir(shared.join("bound")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("from-bind"), "bound in\n").unwrap();

    let spec = GuestSpec {
        kernel: env.kernel.clone(),
        initramfs: env.test_image.clone(),
        cmdline: format!("husk.test=fs:{TAG}"),
        vcpus: 1,
        memory_mib: 256,
    };
    let share = FsShareOptions {
        tag: TAG,
        path: &shared,
        cache: "auto",
    };
    let control = dir.path().join("control.sock");
    let opts = VmmOptions {
        control_socket: Some(&control),
        vsock: None,
        balloon: false,
        ..Default::default()
    };
    let cmd = husk_vmm_with_fs(&env.vmm, &spec, dir.path(), &opts, &[share]).unwrap();
    let mut vm = RunningVm::spawn(cmd).unwrap();
    let marker = vm.wait_for(TEST_INIT_MARKER, BOOT_TIMEOUT);
    marker.unwrap_or_else(|| {
        let busy = thread_busy(vm.pid(), Duration::from_secs(2));
        panic!("husk-vmm threads: {busy}; {}", vm.missing("marker"))
    });

    step(&mut vm, &control, "mount");
    let read = step(&mut vm, &control, "read");
    assert!(read.ends_with("text=written by the host"), "{read}");
    let before = step(&mut vm, &control, "before");
    assert!(before.ends_with("changing=v1 late=0 bound=0"), "{before}");
    step(&mut vm, &control, "write");
    // Every thread of the running VMM, the file server included, holds what it documents.
    let threads =
        husk_tests::process::check_vmm_privileges(vm.pid()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        threads.iter().any(|t| t.name == format!("husk-fs-{TAG}")),
        "no file server thread: {threads:?}"
    );
    // ... in its jail, where the share's host path does not exist: the server reaches it
    // through the descriptor it opened at setup.
    husk_tests::process::check_vmm_jail(vm.pid()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(shared.join("guest-wrote.txt")).unwrap(),
        GUEST_TEXT
    );

    // The device as the VMM sees it while the guest polls for the change below (so it cannot
    // have reset the device yet): active, both queues set up.
    let queues = microvm::control(&control, "queues\n").unwrap();
    assert!(
        queues.starts_with("ok [irq ") && queues.contains(" fs status=DriverOk active=true "),
        "{queues}"
    );
    assert!(
        queues.contains(" q0=avail:") && queues.contains(" q1=avail:"),
        "{queues}"
    );
    eprintln!("{queues}");

    // Changes while the guest runs: a rewritten file, a tmpfs and a bind mount under the share.
    std::fs::write(shared.join("changing.txt"), "v2\n").unwrap();
    let late = Mounted::new(Path::new("husk-e2e"), &shared.join("late"), "tmpfs", 0);
    std::fs::write(shared.join("late/inside.txt"), "in the tmpfs\n").unwrap();
    let bound = Mounted::new(outside.path(), &shared.join("bound"), "", libc::MS_BIND);

    let change = step(&mut vm, &control, "change");
    eprintln!("{change}");
    let mounts = step(&mut vm, &control, "mounts");
    eprintln!("{mounts}");
    assert!(
        mounts.contains("late=in the tmpfs bound=bound in"),
        "{mounts}"
    );
    step(&mut vm, &control, "done");

    let code = vm.wait(BOOT_TIMEOUT);
    assert_eq!(
        code,
        Some(0),
        "guest reboot ends husk-vmm with 0:\n{}",
        vm.console
    );
    assert!(
        !vm.console.contains("warning: virtio-fs"),
        "a well-behaved guest caused device warnings:\n{}",
        vm.console
    );
    drop(bound);
    drop(late);
}
