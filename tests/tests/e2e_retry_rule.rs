//! The rule `make e2e` reruns a failed test binary by (scripts/e2e-failure.py): only for the
//! environment's signatures, never for a failure of husk's own. Runs with plain `cargo test`.

use std::path::Path;
use std::process::Command;

use husk_protocol::vmm::EARLY_BOOT;

fn reason(log: &str, rc: i32) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("binary.log");
    std::fs::write(&path, log).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2e-failure.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("reason")
        .arg(&path)
        .arg(rc.to_string())
        .output()
        .expect("python3 runs scripts/e2e-failure.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn failed_on(msg: &str, extra: &str) -> String {
    format!(
        "running 1 test\n{extra}thread 'a_test' panicked at tests/tests/x.rs:1:1:\n{msg}\n\
         failures:\n    a_test\n\ntest result: FAILED. 0 passed; 1 failed\n"
    )
}

const TRIPLE: &str = "exec in c1: the sandbox VM ended: guest shut down (vCPU 0: triple fault \
                      (reboot) at rip 0xfff0 rsp 0x0 cr0 0x10 cr3 0x0 cr4 0x0 efer 0x0)";
const FETCH: &str = "husk-testhost: a guest triple faulted (the test host's KVM saw a SHUTDOWN \
                     exit): vcpu0-811 [000] ..... 93.1: kvm_exit: vcpu 0 reason shutdown rip \
                     0xffffffff81246c37 info1 0x0 info2 0x0 intr_info 0x80000b0e error_code \
                     0x00000010 [guest kernel: io_serial_in+0xf]\n";
const REBOOT: &str = "husk-testhost: a guest triple faulted (the test host's KVM saw a SHUTDOWN \
                      exit): vcpu0-811 [000] ..... 93.1: kvm_exit: vcpu 0 reason shutdown rip \
                      0xffffffff8101f410 info1 0x0 info2 0x0 intr_info 0x80000403 error_code \
                      0x00000000\n";

#[test]
fn the_test_host_failing_and_guests_it_lost_are_the_environments() {
    assert_eq!(reason("anything", 75), "test-host-failed");
    assert_eq!(
        reason(&failed_on(&format!("pod 3: {EARLY_BOOT}"), ""), 101),
        "guest-early-boot"
    );
    assert_eq!(reason(&failed_on(TRIPLE, FETCH), 101), "guest-fetch-fault");
    let reserved = FETCH.replace("error_code 0x00000010", "error_code 0x00000018");
    assert_eq!(
        reason(&failed_on(TRIPLE, &reserved), 101),
        "guest-fetch-fault"
    );
}

#[test]
fn every_other_failure_is_husks() {
    // A triple fault without the test host's fetch-fault record.
    assert_eq!(reason(&failed_on(TRIPLE, ""), 101), "tests-failed");
    // A data access's page fault (no instruction-fetch bit) is not the signature.
    let data = FETCH.replace("error_code 0x00000010", "error_code 0x00000002");
    assert_eq!(reason(&failed_on(TRIPLE, &data), 101), "tests-failed");
    // The guest's own reboot by triple fault is no fetch fault.
    assert_eq!(reason(&failed_on(TRIPLE, REBOOT), 101), "tests-failed");
    // A fetch fault elsewhere in the run does not excuse a failure that is not a guest's death.
    assert_eq!(
        reason(
            &failed_on("assertion failed: the canary changed", FETCH),
            101
        ),
        "tests-failed"
    );
    assert_eq!(reason("", 124), "killed-at-bound");
}
