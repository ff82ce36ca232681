//! The rule `make e2e` reruns a failed test binary by (scripts/e2e-failure.py): only for the
//! environment's signatures, never for a failure of husk's own. Runs with plain `cargo test`.

use std::path::Path;
use std::process::Command;

use husk_protocol::vmm::EARLY_BOOT;
use husk_tests::guest_loss::FETCH_LOOP;

fn reason(log: &str, rc: i32) -> String {
    script(&["reason"], &[log], &[&rc.to_string()])
}

/// scripts/e2e-failure.py's answer for `args`, the `logs` (written to files) and `more` args.
fn script(args: &[&str], logs: &[&str], more: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let path = dir.path().join(format!("binary.attempt{i}.log"));
            std::fs::write(&path, log).unwrap();
            path
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2e-failure.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(args)
        .args(&paths)
        .args(more)
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

const LOOP: &str = "husk-testhost: a guest is stuck in the test host's fetch fault (its KVM \
                    re-injects a page fault on an instruction fetch the guest cannot take): \
                    fetch-fault loop: 4123 injections in 10 s, the last: vcpu0-206 [000] ..... \
                    289.6: kvm_inj_exception: #PF (0x10)\n";

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
    // Entering the local timer's interrupt: the kernel's IDT or stacks vanished the same way.
    let timer = FETCH.replace(
        "intr_info 0x80000b0e error_code 0x00000010",
        "intr_info 0x800000ec error_code 0x00000000",
    );
    assert_eq!(reason(&failed_on(TRIPLE, &timer), 101), "guest-fetch-fault");
    // The same fault without the triple fault: a stall whose report names the loop, or a pod
    // whose guest stopped answering, in a run where the test host recorded the loop.
    assert_eq!(
        reason(
            &failed_on(
                &format!("no whole echo (...); {FETCH_LOOP}: 19336 injections in 2 s"),
                LOOP
            ),
            101
        ),
        "guest-fetch-fault"
    );
    assert_eq!(
        reason(&failed_on("exec in c1: the guest stopped answering (liveness_timeout_secs = 30): killing its VM", LOOP), 101),
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
    // An NMI being delivered is not the signature.
    let nmi = FETCH.replace(
        "intr_info 0x80000b0e error_code 0x00000010",
        "intr_info 0x80000202 error_code 0x00000000",
    );
    assert_eq!(reason(&failed_on(TRIPLE, &nmi), 101), "tests-failed");
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
    // A stall in a run where no guest was seen stuck in the loop is husk's.
    assert_eq!(
        reason(&failed_on("exec in c1: the guest stopped answering (liveness_timeout_secs = 30): killing its VM", ""), 101),
        "tests-failed"
    );
    // The loop elsewhere in the run does not excuse a failure that is not a stall.
    assert_eq!(
        reason(
            &failed_on("assertion failed: the canary changed", LOOP),
            101
        ),
        "tests-failed"
    );
    assert_eq!(reason("", 124), "killed-at-bound");
}

#[test]
fn a_run_again_skips_only_the_tests_that_passed() {
    // As libtest prints with --test-threads=1 --nocapture: results follow each test's output,
    // and the test host's own lines can land anywhere.
    let first = "running 4 tests\n\
        test quiet ... ok\n\
        test chatty ... harness: up\n[   12.5] console\nstep 2\nok\n\
        test failing ... FAILED\n\
        test dying ... pod 1 up\nhusk-testhost: error: the test host stopped\nok\n";
    let second = format!(
        "running 2 tests\ntest failing ... {FETCH}ok\ntest dying ... step\n\n\
         failures:\n    dying\n\ntest result: FAILED. 1 passed; 1 failed\n"
    );
    assert_eq!(script(&["passed"], &[first], &[]), "chatty\nquiet");
    assert_eq!(
        script(&["passed"], &[first, &second], &[]),
        "chatty\nfailing\nquiet"
    );
}

#[test]
fn a_failed_tests_record_quotes_what_its_shims_and_vmm_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("binary.attempt1.log");
    std::fs::write(
        &log,
        failed_on("exec in c1: ttrpc err: local stream closed", ""),
    )
    .unwrap();
    // The harness saves a failed test's containerd log under the test's name.
    let warn = "husk-vmm: warning: vsock connection (host port 1073741825, guest port 1024): \
                guest reset the connection in state established";
    std::fs::write(
        dir.path().join("a_test.containerd.log"),
        format!(
            "time=\"t\" level=info msg=\"starting containerd\"\n\
             2026-12-04T17:59:13.1Z  INFO husk-vmm: vCPUs running\n\
             2026-12-04T17:59:14.2Z  INFO husk-vmm: {warn}\n\
             2026-12-04T17:59:15.3Z DEBUG guest: a console line\n\
             2026-12-04T17:59:16.4Z ERROR the sandbox VM ended unexpectedly\n"
        ),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/e2e-failure.py");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("python3")
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let record = run(&[
        "record".as_ref(),
        log.as_os_str(),
        "101".as_ref(),
        "binary".as_ref(),
        "1".as_ref(),
        "FAILED the run".as_ref(),
    ]);
    let jsonl = dir.path().join("retries.jsonl");
    std::fs::write(&jsonl, record).unwrap();
    let summary = run(&["summary".as_ref(), jsonl.as_os_str()]);
    assert!(summary.contains(warn), "{summary}");
    assert!(
        summary.contains("the sandbox VM ended unexpectedly"),
        "{summary}"
    );
    assert!(
        !summary.contains("a console line") && !summary.contains("vCPUs running"),
        "{summary}"
    );
}
