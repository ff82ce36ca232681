//! A pod's sandbox (pause) container as containerd's CRI plugin creates it: held by the agent's
//! pod anchor (agent/src/container/pause.rs) with every setting of its spec in force where
//! another process can see it, joined by the pod's other containers, refusing exec, and ending
//! on SIGTERM with status 0 as pause does.

use husk_tests::agent::{self, code_of, ctx, pref, stdio};
use ttrpc::Code;

use crate::common::fixture;

/// `/proc/<pid>/<file>`, read by the test (root, outside the pod's namespaces).
fn proc_file(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> std::path::PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

pub(crate) async fn the_sandbox_container_is_an_anchor_with_its_spec_in_force() {
    let Some(f) = fixture().await else { return };
    let none = stdio(false, false, false, false);
    let mut spec = f.spec(&["/pause"]);
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "sb",
    });
    spec["hostname"] = "pod-sb".into();
    spec["process"]["user"] = serde_json::json!({"uid": 65535, "gid": 65535});
    spec["process"]["noNewPrivileges"] = true.into();
    spec["process"]["oomScoreAdj"] = (-998).into();
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 321}]);
    spec["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"], "effective": ["CAP_KILL"]
    });
    spec["linux"]["sysctl"] = serde_json::json!({"kernel.shmmni": "1234"});
    spec["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    spec["linux"]["resources"]["pids"] = serde_json::json!({"limit": 77});
    spec["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
        {"type": "network", "path": "/proc/77/ns/net"}
    ]);
    let pid = f.create("sb", &spec, none.clone()).await.unwrap();
    f.c.start_process(ctx(), &pref("sb", "")).await.unwrap();

    // Held by the agent's anchor, not by a runner's container init.
    let cmdline = proc_file(pid, "cmdline");
    assert!(cmdline.contains("__husk-pod-anchor"), "{cmdline:?}");
    let status = proc_file(pid, "status");
    for want in [
        "Uid:\t65535\t65535\t65535\t65535",
        "Gid:\t65535\t65535\t65535\t65535",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "CapEff:\t0000000000000020",
        "CapBnd:\t0000000000000020",
        "NSpid:\t",
    ] {
        assert!(status.contains(want), "{want:?} not in {status}");
    }
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "PID 1 of the pod's PID namespace: {nspid}"
    );
    assert_eq!(proc_file(pid, "oom_score_adj").trim(), "-998");
    assert!(
        proc_file(pid, "limits").contains("Max open files            321                  321"),
        "{}",
        proc_file(pid, "limits")
    );
    let procs = std::fs::read_to_string("/sys/fs/cgroup/husk/sb/cgroup.procs").unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    assert_eq!(
        std::fs::read_to_string("/sys/fs/cgroup/husk/sb/pids.max")
            .unwrap()
            .trim(),
        "77"
    );
    for kind in ["ipc", "uts", "pid", "mnt"] {
        assert_ne!(ns(&pid.to_string(), kind), ns("self", kind), "{kind}");
    }
    // Its root is the container's, read-only and alone in its mount namespace: what the pod's
    // processes reach through /proc/1/root is the sandbox image, not the agent's file tree.
    let root = format!("/proc/{pid}/root");
    assert!(
        std::path::Path::new(&format!("{root}/bin/busybox")).exists(),
        "the rootfs"
    );
    for outside in [
        "sys/fs/cgroup/cgroup.controllers",
        "../sys/fs/cgroup/cgroup.controllers",
    ] {
        assert!(
            !std::path::Path::new(&format!("{root}/{outside}")).exists(),
            "{outside} is reachable from the anchor's root"
        );
    }
    let mounts = proc_file(pid, "mountinfo");
    let mounts: Vec<&str> = mounts.lines().collect();
    assert_eq!(mounts.len(), 1, "one mount, the root: {mounts:?}");
    let fields: Vec<&str> = mounts[0].split(' ').collect();
    assert_eq!(fields[4], "/", "mounted at /: {mounts:?}");
    assert!(fields[5].starts_with("ro,"), "read-only: {mounts:?}");

    // A container of the pod joins its namespaces: its hostname, its IPC sysctl, its PID 1.
    let mut app = f.spec(&[
        "sh",
        "-c",
        "hostname; cat /proc/sys/kernel/shmmni; cat /proc/1/cmdline | tr '\\0' ' '; echo",
    ]);
    app["annotations"] = serde_json::json!({"io.kubernetes.cri.sandbox-id": "sb"});
    app["hostname"] = serde_json::Value::Null;
    app["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid", "path": "/proc/77/ns/pid"}, {"type": "ipc", "path": "/proc/77/ns/ipc"},
        {"type": "uts", "path": "/proc/77/ns/uts"}, {"type": "mount"},
        {"type": "network", "path": "/proc/77/ns/net"}
    ]);
    let out_stdio = stdio(false, true, true, false);
    let (code, out, err) = agent::run(&f.agent.socket, &f.c, "app", &app, out_stdio)
        .await
        .unwrap();
    let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["pod-sb", "1234"], "{out}");
    assert!(lines[2].contains("__husk-pod-anchor"), "{out}");

    // Nothing is exec'd into it, and the refusal says why.
    let e = f
        .exec("sb", "e1", &["true"], none.clone())
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::FAILED_PRECONDITION), "{e:?}");
    assert!(format!("{e:?}").contains("sandbox"), "{e:?}");

    // SIGTERM ends it with status 0, as pause.
    f.signal("sb", "", libc::SIGTERM, false).await.unwrap();
    let w = f.c.wait_process(ctx(), &pref("sb", "")).await.unwrap();
    assert_eq!(w.exit_status, 0);
    f.remove("sb", false).await;
    f.assert_clean();
}

pub(crate) async fn a_sandbox_spec_the_kernel_refuses_fails_by_name_and_leaves_nothing() {
    let Some(f) = fixture().await else { return };
    let mut spec = f.spec(&["/pause"]);
    spec["annotations"] = serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"});
    spec["linux"]["namespaces"] = serde_json::json!([
        {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
    ]);
    spec["linux"]["sysctl"] = serde_json::json!({"kernel.no_such_sysctl": "1"});
    let e = f
        .create("sbbad", &spec, stdio(false, false, false, false))
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(Code::INVALID_ARGUMENT), "{e:?}");
    assert!(format!("{e:?}").contains("kernel.no_such_sysctl"), "{e:?}");
    f.assert_clean();
}
