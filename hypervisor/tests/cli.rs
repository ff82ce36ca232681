//! `husk-vmm` refuses bad input before touching KVM, with exit code 1 (VMM error) or 2 (usage)
//! and a message that names the problem.

use std::process::Command;

fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_husk-vmm"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_2() {
    let (code, err) = vmm(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn config_errors_exit_1_and_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.json");
    let (code, err) = vmm(&["--config", missing.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("absent.json"), "{err}");

    let cases = [
        (r#"{"kernel":"/k","vcpus":0}"#, "vcpus = 0"),
        (r#"{"kernel":"/k","memory_mib":1}"#, "memory_mib = 1"),
        (
            r#"{"kernel":"/k","vsock":{"guest_cid":1,"socket":"/s"}}"#,
            "guest_cid = 1",
        ),
        (r#"{"kernel":"/k","cpus":2}"#, "unknown field `cpus`"),
        ("not json", "not valid JSON"),
    ];
    for (json, words) in cases {
        let path = dir.path().join("vm.json");
        std::fs::write(&path, json).unwrap();
        let (code, err) = vmm(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{json}: {err}");
        assert!(err.contains(words), "{json}: {err}");
    }
}
