//! First real boot: QEMU's microvm machine boots the husk guest kernel with a husk-image
//! initramfs, and the guest's init prints its marker. This is the reference husk-vmm is
//! measured against.

use std::time::Duration;

use husk_tests::e2e;
use husk_tests::microvm::{qemu_microvm, watch_boot, GuestSpec, TEST_INIT_MARKER};

#[test]
#[ignore = "needs hardware KVM: run with `make e2e` (uses the nested test host where needed)"]
fn qemu_microvm_boots_the_husk_kernel_to_the_init_marker() {
    let env = e2e::require();
    let spec = GuestSpec {
        kernel: env.kernel,
        initramfs: env.test_image,
        cmdline: String::new(),
        vcpus: 2,
        memory_mib: 256,
    };
    let r = watch_boot(
        qemu_microvm(&spec),
        TEST_INIT_MARKER,
        Duration::from_secs(180),
    )
    .unwrap();
    let line = r
        .marker_line
        .unwrap_or_else(|| panic!("no init marker; console:\n{}", r.console));
    assert!(
        line.contains("kernel=6.1."),
        "unexpected kernel in {line:?}"
    );
    assert!(
        line.contains("cpus=2"),
        "both vCPUs should be online: {line:?}"
    );
    assert!(
        r.console.contains("Linux version 6.1"),
        "kernel banner missing:\n{}",
        r.console
    );
    assert_eq!(
        r.exit_code,
        Some(0),
        "QEMU should exit cleanly on the guest's reboot:\n{}",
        r.console
    );
}
