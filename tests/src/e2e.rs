//! What end-to-end tests need from their environment.
//!
//! End-to-end tests are `#[ignore]`d so that a plain `cargo test` on a host without hardware KVM
//! lists them as ignored instead of pretending they passed. `make e2e` runs them with
//! `--ignored` where hardware KVM exists (natively or in the test host) and sets the variables
//! below; there, a missing prerequisite fails the test with a message naming it.

use std::path::PathBuf;

use crate::hostkind::{detect, HostKind, SysProbe};

/// The artifacts an end-to-end test boots.
#[derive(Debug, Clone)]
pub struct E2eEnv {
    /// The husk guest kernel (`HUSK_KERNEL`, from `make kernel`).
    pub kernel: PathBuf,
    /// The test-init initramfs (`HUSK_TEST_IMAGE`, from `make image`).
    pub test_image: PathBuf,
    /// The `husk-vmm` binary (`HUSK_VMM`, from `make build`).
    pub vmm: PathBuf,
}

fn path_var(name: &str, made_by: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run end-to-end tests with `make e2e` ({made_by})")
    });
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{name}={} does not exist ({made_by})",
        path.display()
    );
    path
}

/// The environment, or a panic that says exactly what is missing.
pub fn require() -> E2eEnv {
    let kind = detect(&SysProbe::system());
    assert!(
        matches!(kind, HostKind::Hardware(_)),
        "end-to-end tests need hardware KVM, and this host has {kind}: run them with `make e2e`, \
         which uses the nested test host"
    );
    E2eEnv {
        kernel: path_var("HUSK_KERNEL", "made by `make kernel`"),
        test_image: path_var("HUSK_TEST_IMAGE", "made by `make image`"),
        vmm: path_var("HUSK_VMM", "made by `make build`"),
    }
}

/// Whether husk VMs started by the harness pin their vCPU threads (`pin_vcpus` in the husk
/// config, `vcpu_affinity` for husk-vmm run directly): yes inside the nested test host
/// (`HUSK_IN_TESTHOST`), unless `HUSK_PIN_VCPUS=0`.
///
/// Why: under QEMU TCG's emulated SVM, guest boots whose vCPU threads migrate between the test
/// host's CPUs die in early kernel setup about one time in twenty, under husk-vmm and QEMU's
/// microvm alike; pinned, about one in a hundred (`scripts/boot-stress.sh`, issue 3).
pub fn pin_vcpus() -> bool {
    std::env::var_os("HUSK_IN_TESTHOST").is_some()
        && std::env::var("HUSK_PIN_VCPUS").as_deref() != Ok("0")
}

/// The `vcpu_affinity` for a husk-vmm the harness runs directly: vCPU `i` on the test host's
/// CPU `i % n`, or empty where [`pin_vcpus`] says no.
pub fn vcpu_affinity(vcpus: u32) -> Vec<u32> {
    if !pin_vcpus() {
        return Vec::new();
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (0..vcpus).map(|i| i % n).collect()
}
