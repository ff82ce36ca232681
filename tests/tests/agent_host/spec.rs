//! The OCI spec enforced as runc enforces it (user, cwd, env, read-only rootfs, capabilities,
//! no-new-privileges, seccomp, rlimits, masked paths, hostname), compared with what runc prints.

use husk_tests::agent::{self, stdio};

use crate::common::fixture;

pub(crate) async fn the_spec_is_enforced_as_runc_does() {
    let Some(f) = fixture().await else { return };
    let script = "id -u; id -g; echo cwd=$(pwd); echo env=$HUSK_E; \
        touch /rootfs-write 2>/dev/null && echo rw || echo ro; \
        grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; \
        ulimit -n; cat /proc/kcore 2>/dev/null | head -c 1 | wc -c; hostname";
    let mut spec = f.spec(&["sh", "-c", script]);
    spec["process"]["user"] = serde_json::json!({"uid": 65534, "gid": 65534});
    spec["process"]["cwd"] = "/tmp".into();
    spec["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push("HUSK_E=42".into());
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 321}]);
    // seccomp: refuse mkdir with EPERM (errnoRet 1), allow the rest
    spec["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let script2 = format!("{script}; mkdir /tmp/d 2>&1 || true");
    spec["process"]["args"] = serde_json::json!(["sh", "-c", script2]);
    let (status, out, _) = agent::run(
        &f.agent.socket,
        &f.c,
        "spec1",
        &spec,
        stdio(false, true, true, false),
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        ["65534", "65534", "cwd=/tmp", "env=42", "ro"],
        "{out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(out.contains("\n321\n"), "rlimit: {out}");
    assert!(
        out.contains("\n0\nhusk-test\n"),
        "kcore masked, hostname: {out}"
    );
    assert!(
        out.contains("Operation not permitted"),
        "seccomp errno: {out}"
    );
    // And exactly what runc prints for the same spec (capabilities included: runc 1.1 cannot
    // raise ambient capabilities that are not inheritable, so a non-root user has none).
    let dir = tempfile::Builder::new()
        .prefix("rc")
        .tempdir_in("/tmp")
        .unwrap();
    husk_tests::rootfs::write_bundle(&dir.path().join("b"), &spec).unwrap();
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(dir.path().join("r"))
        .args(["run", "--bundle"])
        .arg(dir.path().join("b"))
        .arg("runc-spec1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("runc (scripts/install-deps.sh installs it)");
    assert!(
        runc.status.success(),
        "runc: {}",
        String::from_utf8_lossy(&runc.stderr)
    );
    assert_eq!(
        out,
        String::from_utf8_lossy(&runc.stdout),
        "husk-agent and runc differ"
    );
    f.assert_clean();
}
