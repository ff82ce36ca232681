//! `husk-testhost` as a user meets it: output and exit codes come back, a hardware-virtualization
//! /dev/kvm is there, and a timeout stops everything and says so. Runs natively on a VT-x/AMD-V
//! host and boots the nested test host elsewhere (about 10 s per boot here).

use std::process::Command;

fn testhost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_husk-testhost"))
}

#[test]
fn command_output_exit_code_and_kvm_come_through() {
    let out = testhost()
        .args(["--timeout", "300", "--"])
        .arg(
            "echo out-line; echo err-line >&2; test -c /dev/kvm || exit 90; \
              grep -qwE 'svm|vmx' /proc/cpuinfo || exit 91; exit 7",
        )
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("out-line") && !stdout.contains("err-line"),
        "stdout:\n{stdout}"
    );
    assert!(stderr.contains("err-line"), "stderr:\n{stderr}");
}

#[test]
fn a_timeout_is_named_and_leaves_no_qemu() {
    let out = testhost()
        .args(["--timeout", "25", "--", "sleep 600"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "stderr:\n{stderr}");
    assert!(stderr.contains("timed out after 25s"), "stderr:\n{stderr}");
    // In nested mode the message names QEMU's pid; that process must be gone.
    if let Some(pid) = stderr
        .split("QEMU (pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
    {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !cmdline.contains("qemu"),
            "QEMU pid {pid} still runs: {cmdline}"
        );
    }
}

#[test]
fn usage_errors_are_named() {
    let out = testhost().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no command given"));
    let out = testhost()
        .args(["--env", "NOEQUALS", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOEQUALS"));
}
