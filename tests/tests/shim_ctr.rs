//! `ctr` against husk and runc: the same commands, the same observable results.
//!
//! Each case of the table runs under runc and under husk in one private containerd
//! (src/containerd.rs) with a locally built busybox image, and both must give the same stdout
//! and exit code (runc's must also be the expected one). Then: proof that husk's container ran
//! in a VM, whose husk-vmm lives in the container's cgroup. These are end-to-end tests (`#[ignore]`d): `make e2e` runs them in the test host.
//! `ctr_table_under_runc` needs only containerd and runc and proves the harness by itself; the
//! husk tests fail, naming what is missing, until husk-vmm's vsock and virtio-fs and the agent
//! image exist.

use std::time::{Duration, Instant};

use husk_tests::containerd::{
    run_bounded, Containerd, CtrOutput, HuskArtifacts, HuskSettings, HUSK, RUNC,
};
use husk_tests::oci_image::BUSYBOX_REF;

/// Bound of one ctr step: above the shim's boot timeout in the harness (120 s), so a slow
/// nested boot is not cut short, but low enough that a hung guest costs minutes, not the run.
const T: Duration = Duration::from_secs(180);

/// What a case observed: normalized stdout and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Obs {
    stdout: String,
    code: i32,
}

impl Obs {
    fn of(out: &CtrOutput) -> Obs {
        Obs {
            stdout: out.stdout.replace('\r', ""),
            code: out.code,
        }
    }
}

enum Expect {
    /// Exactly this stdout and code.
    Exact(&'static str, i32),
    /// stdout contains each string (tty output also carries echoed input), and this code.
    Contains(&'static [&'static str], i32),
}

impl Expect {
    fn check(&self, o: &Obs) -> Result<(), String> {
        let ok = match self {
            Expect::Exact(s, c) => o.stdout == *s && o.code == *c,
            Expect::Contains(parts, c) => {
                parts.iter().all(|p| o.stdout.contains(p)) && o.code == *c
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("got {o:?}"))
        }
    }
}

type Scenario = fn(&Containerd, &str, &str) -> Obs;

struct Case {
    name: &'static str,
    run: Scenario,
    expect: Expect,
}

fn run_args<'a>(rt: &'a str, id: &'a str, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", "--rm", "--runtime", rt];
    v.extend_from_slice(extra);
    v.push(BUSYBOX_REF);
    v.push(id);
    v.extend_from_slice(cmd);
    v
}

fn simple(c: &Containerd, rt: &str, id: &str, cmd: &[&str]) -> Obs {
    Obs::of(&c.ctr(&run_args(rt, id, &[], cmd), None, T))
}

/// Polls `ctr task ls` until `id` has `status` (bounded).
fn wait_status(c: &Containerd, id: &str, status: &str) -> bool {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        let ls = c.ctr(&["task", "ls"], None, T);
        if ls.stdout.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&id) && f.last() == Some(&status)
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `ctr run -d ... sleep 3600`, waiting until it runs.
fn detached(c: &Containerd, rt: &str, id: &str) -> Result<(), Obs> {
    let out = c.ctr(
        &[
            "run",
            "-d",
            "--runtime",
            rt,
            BUSYBOX_REF,
            id,
            "sleep",
            "3600",
        ],
        None,
        T,
    );
    if out.code != 0 || !wait_status(c, id, "RUNNING") {
        return Err(Obs {
            stdout: format!("ctr run -d failed: {out}"),
            code: -1,
        });
    }
    Ok(())
}

fn remove(c: &Containerd, id: &str) {
    c.ctr(&["task", "kill", "-s", "SIGKILL", id], None, T);
    wait_status(c, id, "STOPPED");
    c.ctr(&["task", "rm", "-f", id], None, T);
    c.ctr(&["container", "rm", id], None, T);
}

/// Runs `ctr run` in the background, sends `signal` once the task runs, returns the run's end.
fn killed_by(c: &Containerd, rt: &str, id: &str, cmd: &[&str], signal: &str) -> Obs {
    let cmdline = c.ctr_command(&run_args(rt, id, &[], cmd));
    let runner = std::thread::spawn(move || run_bounded(cmdline, None, T));
    if !wait_status(c, id, "RUNNING") {
        return Obs {
            stdout: "the task never ran".into(),
            code: -1,
        };
    }
    std::thread::sleep(Duration::from_secs(2)); // let the shell install its trap
    let k = c.ctr(&["task", "kill", "-s", signal, id], None, T);
    let out = runner.join().unwrap();
    if k.code != 0 {
        return Obs {
            stdout: format!("ctr task kill failed: {k}"),
            code: -1,
        };
    }
    Obs::of(&out)
}

fn case_echo(c: &Containerd, rt: &str, id: &str) -> Obs {
    simple(c, rt, id, &["echo", "hello from the container"])
}

fn case_exit3(c: &Containerd, rt: &str, id: &str) -> Obs {
    simple(c, rt, id, &["sh", "-c", "exit 3"])
}

/// A shell that SIGKILLs itself. Not as the container's PID 1: the kernel drops signals a
/// namespace's init has no handler for (runc gives 0 for a PID-1 `kill -9 $$`), so the
/// container's init reports its child's status, as a shell does.
fn case_kill9(c: &Containerd, rt: &str, id: &str) -> Obs {
    simple(c, rt, id, &["sh", "-c", "sh -c 'kill -9 $$'; exit $?"])
}

fn case_stderr(c: &Containerd, rt: &str, id: &str) -> Obs {
    let out = c.ctr(
        &run_args(
            rt,
            id,
            &[],
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 2"],
        ),
        None,
        T,
    );
    Obs {
        stdout: format!("{}|{}", out.stdout, out.stderr),
        code: out.code,
    }
}

/// stdin through ctr (which always attaches its own). The process reads what it needs:
/// `cat` itself would never end under runc, which delivers stdin's end-of-file only on CloseIO,
/// and ctr never sends that; husk does the same.
fn case_cat_stdin(c: &Containerd, rt: &str, id: &str) -> Obs {
    Obs::of(&c.ctr(
        &run_args(rt, id, &[], &["sh", "-c", "head -n 2; echo done"]),
        Some(b"line one\nline two\n"),
        T,
    ))
}

fn case_tty(c: &Containerd, rt: &str, id: &str) -> Obs {
    let inner = c.ctr_shell(&run_args(
        rt,
        id,
        &["-t"],
        &[
            "sh",
            "-c",
            "test -t 0 && echo is-a-tty; read x; echo got-$x; exit 5",
        ],
    ));
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &inner, "/dev/null"]);
    Obs::of(&run_bounded(script, Some(b"abc\n"), T))
}

fn case_exec(c: &Containerd, rt: &str, id: &str) -> Obs {
    if let Err(o) = detached(c, rt, id) {
        return o;
    }
    let out = c.ctr(
        &[
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo in-exec; exit 4",
        ],
        None,
        T,
    );
    remove(c, id);
    Obs::of(&out)
}

fn case_kill_term(c: &Containerd, rt: &str, id: &str) -> Obs {
    killed_by(
        c,
        rt,
        id,
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; while true; do sleep 1; done",
        ],
        "SIGTERM",
    )
}

fn case_kill_kill(c: &Containerd, rt: &str, id: &str) -> Obs {
    killed_by(c, rt, id, &["sleep", "3600"], "SIGKILL")
}

fn case_pause_resume(c: &Containerd, rt: &str, id: &str) -> Obs {
    if let Err(o) = detached(c, rt, id) {
        return o;
    }
    let mut seen = Vec::new();
    let p = c.ctr(&["task", "pause", id], None, T);
    seen.push(if wait_status(c, id, "PAUSED") {
        "PAUSED"
    } else {
        "not-paused"
    });
    let r = c.ctr(&["task", "resume", id], None, T);
    seen.push(if wait_status(c, id, "RUNNING") {
        "RUNNING"
    } else {
        "not-running"
    });
    remove(c, id);
    Obs {
        stdout: seen.join(" "),
        code: p.code.max(r.code),
    }
}

fn case_metrics(c: &Containerd, rt: &str, id: &str) -> Obs {
    if let Err(o) = detached(c, rt, id) {
        return o;
    }
    let out = c.ctr(&["task", "metrics", id], None, T);
    remove(c, id);
    // Which kinds of metric are there (values differ by nature; names differ between cgroup
    // v1 hosts, where runc reports v1 metrics, and v2, which husk's guest always uses).
    let names: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut kinds = Vec::new();
    for (kind, v2, v1) in [
        ("cpu", "cpu.usage_usec", "cpuacct.usage"),
        ("memory", "memory.usage", "memory.usage_in_bytes"),
        ("pids", "pids.current", "pids.current"),
    ] {
        if names.contains(&v2) || names.contains(&v1) {
            kinds.push(kind);
        }
    }
    Obs {
        stdout: kinds.join(" "),
        code: out.code,
    }
}

fn case_ps(c: &Containerd, rt: &str, id: &str) -> Obs {
    if let Err(o) = detached(c, rt, id) {
        return o;
    }
    let out = c.ctr(&["task", "ps", id], None, T);
    remove(c, id);
    let lines: Vec<&str> = out.stdout.lines().collect();
    Obs {
        stdout: format!(
            "header={} processes={}",
            lines
                .first()
                .map(|h| h.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            lines.len().saturating_sub(1)
        ),
        code: out.code,
    }
}

fn case_rm_leaves_nothing(c: &Containerd, rt: &str, id: &str) -> Obs {
    let out = c.ctr(&run_args(rt, id, &[], &["true"]), None, T);
    std::thread::sleep(Duration::from_secs(1));
    Obs {
        stdout: c.leftovers(&[id]).join("\n"),
        code: out.code,
    }
}

fn table() -> Vec<Case> {
    vec![
        Case {
            name: "echo",
            run: case_echo,
            expect: Expect::Exact("hello from the container\n", 0),
        },
        Case {
            name: "exit3",
            run: case_exit3,
            expect: Expect::Exact("", 3),
        },
        Case {
            name: "kill9",
            run: case_kill9,
            expect: Expect::Exact("", 137),
        },
        Case {
            name: "stderr",
            run: case_stderr,
            expect: Expect::Exact("to-out\n|to-err\n", 2),
        },
        Case {
            name: "stdin",
            run: case_cat_stdin,
            expect: Expect::Exact("line one\nline two\ndone\n", 0),
        },
        Case {
            name: "tty",
            run: case_tty,
            expect: Expect::Contains(&["is-a-tty", "got-abc"], 5),
        },
        Case {
            name: "exec",
            run: case_exec,
            expect: Expect::Exact("in-exec\n", 4),
        },
        Case {
            name: "sigterm",
            run: case_kill_term,
            expect: Expect::Exact("", 7),
        },
        Case {
            name: "sigkill",
            run: case_kill_kill,
            expect: Expect::Exact("", 137),
        },
        Case {
            name: "pause",
            run: case_pause_resume,
            expect: Expect::Exact("PAUSED RUNNING", 0),
        },
        Case {
            name: "metrics",
            run: case_metrics,
            expect: Expect::Exact("cpu memory pids", 0),
        },
        Case {
            name: "ps",
            run: case_ps,
            expect: Expect::Exact("header=PID INFO processes=1", 0),
        },
        Case {
            name: "rm",
            run: case_rm_leaves_nothing,
            expect: Expect::Exact("", 0),
        },
    ]
}

fn husk_settings() -> HuskSettings {
    let artifacts = HuskArtifacts::from_env().unwrap_or_else(|e| {
        panic!("{e}: run the husk end-to-end tests with `make e2e` after `make build image kernel`")
    });
    HuskSettings::new(artifacts)
}

#[test]
#[ignore = "end-to-end: needs containerd and runc; run with `make e2e`"]
fn ctr_table_under_runc() {
    let c = Containerd::start(None).unwrap();
    c.import_busybox().unwrap();
    let mut failures = Vec::new();
    let started = Instant::now();
    for case in table() {
        eprintln!("[{:>4} s] case {}", started.elapsed().as_secs(), case.name);
        let id = format!("{}-runc", case.name);
        let o = (case.run)(&c, RUNC, &id);
        eprintln!("runc {:<8} {o:?}", case.name);
        if let Err(e) = case.expect.check(&o) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "runc cases failed:\n{}\ncontainerd log:\n{}",
        failures.join("\n"),
        c.log_tail(40)
    );
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn ctr_table_husk_matches_runc() {
    husk_tests::e2e::require();
    let settings = husk_settings();
    let c = Containerd::start(Some(&settings)).unwrap();
    c.import_busybox().unwrap();
    let mut failures = Vec::new();
    let started = Instant::now();
    for case in table() {
        eprintln!("[{:>4} s] case {}", started.elapsed().as_secs(), case.name);
        let runc = (case.run)(&c, RUNC, &format!("{}-runc", case.name));
        let husk_log_from = c.log_len();
        let husk = (case.run)(&c, HUSK, &format!("{}-husk", case.name));
        eprintln!("{:<8} runc {runc:?}\n{:<8} husk {husk:?}", case.name, "");
        if let Err(e) = case.expect.check(&runc) {
            failures.push(format!("{} (runc, the reference): {e}", case.name));
        }
        // A VM lost under a case ends its task like a SIGKILL (137) with nothing in the
        // observation to say why: the shim's log of the case does.
        let lost = || {
            if husk_tests::guest_loss::vm_ended_on_triple_fault(&c.log_since(husk_log_from)) {
                " (the shim: the sandbox VM ended on a triple fault)"
            } else {
                ""
            }
        };
        if let Err(e) = case.expect.check(&husk) {
            failures.push(format!(
                "{} (husk): {e}; runc gave {runc:?}{}",
                case.name,
                lost()
            ));
        } else if matches!(case.expect, Expect::Exact(..)) && husk != runc {
            failures.push(format!(
                "{}: husk {husk:?} != runc {runc:?}{}",
                case.name,
                lost()
            ));
        }
    }
    let saved = (!failures.is_empty())
        .then(|| c.save_log("ctr_table"))
        .flatten();
    // The retry rule reads a panic's first line: say there when every difference came from a
    // guest lost to a triple fault (the shim's account of the VM's end names it).
    let lost = failures
        .iter()
        .all(|f| husk_tests::guest_loss::names_triple_fault(f));
    assert!(
        failures.is_empty(),
        "husk differs from runc{}:\n{}\nwhole containerd log: {saved:?}\ncontainerd log tail (with the shim's):\n{}",
        if lost { ", each time on a guest lost to a triple fault" } else { "" },
        failures.join("\n"),
        c.log_tail(80)
    );
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn husk_containers_run_in_a_vm() {
    husk_tests::e2e::require();
    let settings = husk_settings();
    let c = Containerd::start(Some(&settings)).unwrap();
    c.import_busybox().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let guest = c.ctr(&run_args(HUSK, "vm-uname", &[], &["uname", "-r"]), None, T);
    assert_eq!(guest.code, 0, "{guest}\n{}", c.log_tail(60));
    assert_ne!(
        guest.stdout.trim(),
        host.trim(),
        "the container saw the host's kernel: it did not run in a VM"
    );
    let runc = c.ctr(
        &run_args(RUNC, "host-uname", &[], &["uname", "-r"]),
        None,
        T,
    );
    assert_eq!(
        runc.stdout.trim(),
        host.trim(),
        "runc must see the host kernel"
    );
    let cpu = c.ctr(
        &run_args(HUSK, "vm-cpuinfo", &[], &["cat", "/proc/cpuinfo"]),
        None,
        T,
    );
    assert_eq!(cpu.code, 0, "{cpu}");
    assert!(
        cpu.stdout
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor")),
        "the guest's /proc/cpuinfo has no hypervisor flag:\n{}",
        cpu.stdout
    );
    let processors = cpu
        .stdout
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    assert_eq!(
        processors,
        usize::from(settings.vcpus),
        "the guest must have the configured vCPUs"
    );
    // husk-vmm lives in the container's cgroup (ctr's default cgroupsPath, /<namespace>/<id>),
    // which goes with the container.
    detached(&c, HUSK, "vm-cgroup").unwrap_or_else(|o| panic!("{o:?}\n{}", c.log_tail(60)));
    let vm_json = format!("{}/vm-cgroup/vm.json", c.husk_state.display());
    let vmms = husk_tests::containerd::processes_with(&vm_json);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    let want = format!("/{}/vm-cgroup", c.namespace());
    assert_eq!(husk_tests::cgroup::of(vmms[0].0), Some(want.clone()));
    remove(&c, "vm-cgroup");
    c.assert_clean(&["vm-uname", "vm-cpuinfo", "vm-cgroup"]);
    assert!(
        !husk_tests::cgroup::dir(&want).exists(),
        "the container's cgroup {want} is left"
    );
}
