//! Nested mode: boot the test host under QEMU TCG and run the command inside it.
//!
//! The run directory (a fresh temporary directory, shared writable) carries the command in
//! (`cmd.sh`) and its results out (`stdout`, `stderr`, `exit`, and `ready` once the test host
//! can run commands). The harness streams stdout/stderr as they grow, so long runs show progress.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::kvm_trace::ShutdownTrace;
use super::{io_err, Assets, Mode, Outcome, RunSpec, TestHostError, INTERRUPTED};
use crate::process::{kill_and_reap, kill_with_parent, wait_until};

/// Environment variables carried into the test host, besides those the spec names.
fn carried_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k == "PATH"
                || k == "HOME"
                || k == "TERM"
                || k.starts_with("HUSK_")
                || k.starts_with("RUST_")
        })
        .filter(|(k, _)| k != "HUSK_TESTHOST")
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the test host runs: environment, working directory, then the command.
fn command_script(spec: &RunSpec) -> String {
    let mut script = String::from("#!/bin/sh\n");
    for (k, v) in carried_env().into_iter().chain(spec.env.iter().cloned()) {
        if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            script.push_str(&format!("export {k}={}\n", shell_quote(&v)));
        }
    }
    script.push_str("export HUSK_IN_TESTHOST=1\n");
    // The test host's record of guest triple faults (init.sh; crate::guest_loss reads it).
    script.push_str("export HUSK_TESTHOST_KVM_SHUTDOWNS=\"$(dirname \"$0\")/kvm-shutdowns\"\n");
    script.push_str(&format!(
        "cd {} || exit 125\n",
        shell_quote(&spec.cwd.to_string_lossy())
    ));
    script.push_str(&spec.command);
    script.push('\n');
    script
}

/// Follows a file that another machine appends to, copying new bytes to `out`.
struct Follower {
    path: PathBuf,
    offset: u64,
}

impl Follower {
    fn pump(&mut self, out: &mut dyn Write) {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.offset += n as u64;
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
    }
}

/// kvm_amd's parameters in the test host: the module's defaults unless `HUSK_TESTHOST_KVM_AMD`
/// names some (comma-separated, e.g. `npt=0`), for experiments on the nested KVM.
///
/// Tried against the early-boot guest failures of issue 3 (`scripts/boot-stress.sh`, four
/// guests at once, where husk-vmm and QEMU's microvm each lose about one boot in twenty):
/// `vgif=0` changed nothing; `npt=0` (shadow paging) ran 52 boots clean and then panicked the
/// test host's kernel (a stack overflow in KVM's shadow-paging path). So the defaults stay.
const KVM_AMD_PARAMS: &str = "";

/// The size of QEMU's translated-code cache for the test host, in MiB: QEMU's largest (its
/// default is 1 GiB), unless `HUSK_TESTHOST_TB_MIB` says otherwise.
///
/// QEMU empties the whole cache when it is full. Under `make bench BENCH=cri` the 1 GiB cache
/// filled every ~65 s (QEMU's `info jit`, read over a monitor socket, 2026-12-06), and each
/// VM restored from a template after such a flush ran its first 100 ms of guest code at about
/// 2.5x the guest-mode time of one restored before the next flush (which reuses the code of
/// the template's shared pages translated for the pod before): ten rounds out of ten followed
/// that rule (docs/performance.md). A cold boot translates afresh either way (its guest RAM is
/// new pages). Hardware has no such cache; a larger one makes the nested figures nearer it.
const TB_MIB: &str = "2048";

fn tb_mib() -> String {
    std::env::var("HUSK_TESTHOST_TB_MIB").unwrap_or_else(|_| TB_MIB.into())
}

/// QEMU's TCG threading for the test host: `multi` (one host thread per vCPU) unless
/// `HUSK_TESTHOST_TCG` says `single`.
fn tcg_threads() -> String {
    match std::env::var("HUSK_TESTHOST_TCG").as_deref() {
        Ok("single") => "single".into(),
        _ => "multi".into(),
    }
}

fn kvm_amd_params() -> String {
    std::env::var("HUSK_TESTHOST_KVM_AMD").unwrap_or_else(|_| KVM_AMD_PARAMS.into())
}

fn qemu_command(spec: &RunSpec, assets: &Assets, rundir: &Path, rw: &[PathBuf]) -> Command {
    // loglevel=5: warnings reach the console, among them the stack of a soft lockup (printed at
    // the default level, 4), so a wedged test host's report says where its CPU was stuck.
    let mut cmdline = format!(
        "console=ttyS0 quiet loglevel=5 panic=-1 husk.rundir={}",
        rundir.display()
    );
    // Extra kernel parameters for the test host, for experiments (e.g. `nohz=off`).
    if let Ok(extra) = std::env::var("HUSK_TESTHOST_CMDLINE") {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    let kvm_amd = kvm_amd_params();
    if !kvm_amd.is_empty() {
        cmdline.push_str(&format!(" husk.kvm_amd={kvm_amd}"));
    }
    if !rw.is_empty() {
        let list: Vec<_> = rw
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        cmdline.push_str(&format!(" husk.rw={}", list.join(",")));
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    let accel = format!("tcg,thread={},tb-size={}", tcg_threads(), tb_mib());
    cmd.args(["-accel", &accel, "-M", "q35", "-cpu", "max"])
        .args([
            "-smp",
            &spec.cpus.to_string(),
            "-m",
            &spec.memory_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", rundir.join("console.log").display()))
        .arg("-kernel")
        .arg(&assets.kernel)
        .arg("-initrd")
        .arg(&assets.initramfs)
        .args(["-append", &cmdline])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    for (i, dir) in std::iter::once(rundir)
        .chain(rw.iter().map(PathBuf::as_path))
        .enumerate()
    {
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=rw{i},security_model=none,multidevs=remap",
            dir.display()
        ));
    }
    // Extra QEMU arguments, for experiments (e.g. `-monitor unix:/tmp/m.sock,server,nowait` to
    // read `info jit`); split at whitespace.
    if let Ok(extra) = std::env::var("HUSK_TESTHOST_QEMU_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn console_tail(rundir: &Path, lines: usize) -> String {
    let text = fs::read_to_string(rundir.join("console.log")).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What the test host's kernel said first when it went wrong (an oops, a panic, a lockup or a
/// stall report starts with one of these), so a report shows the cause and not only the
/// trace's last frames.
const KERNEL_TROUBLE: &[&str] = &[
    "BUG:",
    "Oops",
    "general protection",
    "double fault",
    "unable to handle",
    "stack guard",
    "watchdog:",
    "rcu: INFO",
    "hung_task",
    "Kernel panic",
];

/// The console from the first sign of kernel trouble among its last lines (at most `max`
/// lines: the first ones, then the last ones), or its last `fallback` lines when there is none.
fn console_story(console: &str, max: usize, fallback: usize) -> String {
    let all: Vec<&str> = console.lines().collect();
    let recent = &all[all.len().saturating_sub(400)..];
    let Some(first) = recent
        .iter()
        .position(|l| KERNEL_TROUBLE.iter().any(|t| l.contains(t)))
    else {
        return recent[recent.len().saturating_sub(fallback)..].join("\n");
    };
    let story = &recent[first..];
    if story.len() <= max {
        return story.join("\n");
    }
    let head = max * 2 / 3;
    let tail = max - head;
    format!(
        "{}\n[... {} lines ...]\n{}",
        story[..head].join("\n"),
        story.len() - max,
        story[story.len() - tail..].join("\n")
    )
}

fn console_report(rundir: &Path) -> String {
    let text = fs::read_to_string(rundir.join("console.log")).unwrap_or_default();
    console_story(&text, 150, 40)
}

/// Directories the test host covers with a fresh tmpfs (see init.sh): host paths below them are
/// not visible inside.
const HIDDEN: &[&str] = &["/run", "/var/lib/containerd", "/var/lib/husk"];

/// Refuses a working or writable directory that the test host would hide.
fn check_visible(path: &Path) -> Result<(), TestHostError> {
    match HIDDEN.iter().find(|h| path.starts_with(h)) {
        Some(h) => Err(TestHostError::Io {
            what: format!(
                "{} is under {h}, which the test host replaces with an empty tmpfs",
                path.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
        None => Ok(()),
    }
}

/// How long the test host's heartbeat (written every 5 s by its init) may stall before the
/// test host counts as wedged. Generous: a loaded test host still runs a shell loop within
/// seconds, and a wedged one never does.
const WEDGED_AFTER: Duration = Duration::from_secs(120);

/// Whether the heartbeat file was last written more than [`WEDGED_AFTER`] ago. A heartbeat
/// that does not exist yet (the command just started) is not stalled.
fn heartbeat_stalled(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > WEDGED_AFTER)
}

/// Whether a test host has stopped: ready and its heartbeat stalled, or never ready after
/// [`WEDGED_AFTER`] (it is ready in about 8 s; one seen in CI never printed anything and
/// held its binary for the whole 900 s bound).
fn wedged(ready: bool, running: Duration, heartbeat: &Path) -> bool {
    if ready {
        heartbeat_stalled(heartbeat)
    } else {
        running > WEDGED_AFTER
    }
}

pub(super) fn run(spec: &RunSpec, assets: &Assets) -> Result<Outcome, TestHostError> {
    check_visible(&spec.cwd)?;
    for d in &spec.rw_dirs {
        check_visible(d)?;
    }
    let rundir = tempfile::Builder::new()
        .prefix("husk-testhost.")
        .tempdir()
        .map_err(io_err("creating the run directory"))?;
    let dir = rundir.path();
    fs::write(dir.join("cmd.sh"), command_script(spec)).map_err(io_err("writing cmd.sh"))?;
    let mut rw = Vec::new();
    for d in &spec.rw_dirs {
        fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        rw.push(fs::canonicalize(d).map_err(io_err(format!("resolving {}", d.display())))?);
    }

    let mut qemu = qemu_command(spec, assets, dir, &rw);
    kill_with_parent(&mut qemu);
    let started = Instant::now();
    let mut child = qemu.spawn().map_err(io_err(
        "starting qemu-system-x86_64 (install qemu-system-x86)",
    ))?;
    let deadline = started + spec.timeout;
    let mut out = Follower {
        path: dir.join("stdout"),
        offset: 0,
    };
    let mut err = Follower {
        path: dir.join("stderr"),
        offset: 0,
    };
    let mut shutdowns = ShutdownTrace::new(dir);
    let mut ready_secs = None;

    let status = loop {
        let step = (Instant::now() + Duration::from_millis(100)).min(deadline);
        let exited = wait_until(&mut child, step).map_err(io_err("waiting for QEMU"))?;
        if ready_secs.is_none() && dir.join("ready").exists() {
            let secs = started.elapsed().as_secs_f64();
            ready_secs = Some(secs);
            let params = match kvm_amd_params() {
                p if p.is_empty() => String::new(),
                p => format!(", kvm_amd {p}"),
            };
            eprintln!(
                "husk-testhost: test host ({}{params}) ready in {secs:.1}s",
                assets.release
            );
        }
        out.pump(&mut std::io::stdout());
        err.pump(&mut std::io::stderr());
        shutdowns.pump(&mut std::io::stderr());
        if let Some(status) = exited {
            break status;
        }
        let stopped = format!("; QEMU (pid {}) stopped", child.id());
        let stop = if INTERRUPTED.load(Ordering::SeqCst) {
            Some(TestHostError::Interrupted(stopped))
        } else if Instant::now() >= deadline {
            Some(TestHostError::Timeout(spec.timeout, stopped))
        } else if wedged(
            ready_secs.is_some(),
            started.elapsed(),
            &dir.join("heartbeat"),
        ) {
            Some(TestHostError::Wedged(WEDGED_AFTER, stopped))
        } else {
            None
        };
        if let Some(e) = stop {
            let _ = kill_and_reap(&mut child, false);
            if spec.verbose {
                eprintln!("--- test host console ---\n{}", console_tail(dir, 200));
            } else if matches!(e, TestHostError::Wedged(..)) {
                // A lockup or a stall the kernel reported before its userspace went quiet.
                eprintln!(
                    "--- the wedged test host's console ---\n{}",
                    console_report(dir)
                );
            }
            return Err(e);
        }
    };
    if spec.verbose {
        eprintln!("--- test host console ---\n{}", console_tail(dir, 200));
    }
    let code = fs::read_to_string(dir.join("exit"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match code {
        Some(code) => Ok(Outcome {
            code,
            mode: Mode::Nested,
            ready_secs,
        }),
        None => {
            let mut qemu_err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut qemu_err);
            }
            let init_err = fs::read_to_string(dir.join("init-error")).unwrap_or_default();
            Err(TestHostError::NoExitCode {
                status: format!("{status}"),
                console: format!("{}\n{init_err}{qemu_err}", console_report(dir)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_report_starts_at_the_first_sign_of_trouble() {
        let mut console: Vec<String> = (0..50).map(|i| format!("boot line {i}")).collect();
        console
            .push("[  215.5] BUG: stack guard page was hit at 00000000 (stack is ff78..)".into());
        console.extend((0..300).map(|i| format!("[  215.5]  frame {i}")));
        console.push("[  215.5] Kernel panic - not syncing: Fatal exception in interrupt".into());
        let story = console_story(&console.join("\n"), 150, 40);
        assert!(
            story.starts_with("[  215.5] BUG: stack guard page"),
            "{story}"
        );
        assert!(story.ends_with("Fatal exception in interrupt"), "{story}");
        assert!(story.contains("[... 152 lines ...]"), "{story}");
        assert_eq!(story.lines().count(), 151);
        let quiet = console_story("a\nb\nc", 150, 2);
        assert_eq!(quiet, "b\nc");
    }

    #[test]
    fn a_test_host_that_never_gets_ready_is_wedged_after_the_same_bound() {
        let dir = tempfile::tempdir().unwrap();
        let beat = dir.path().join("heartbeat");
        assert!(!wedged(false, Duration::from_secs(30), &beat));
        assert!(wedged(false, WEDGED_AFTER + Duration::from_secs(1), &beat));
        // Once ready, only the heartbeat counts (a missing one is not yet a stall).
        assert!(!wedged(true, WEDGED_AFTER * 5, &beat));
    }

    #[test]
    fn a_stale_heartbeat_is_a_stall_and_a_fresh_or_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let beat = dir.path().join("heartbeat");
        assert!(!heartbeat_stalled(&beat));
        fs::write(&beat, "1").unwrap();
        assert!(!heartbeat_stalled(&beat));
        let old = std::time::SystemTime::now() - WEDGED_AFTER - Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&beat)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(heartbeat_stalled(&beat));
    }

    #[test]
    fn hidden_directories_are_refused_by_name() {
        let err = check_visible(Path::new("/run/containerd/x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/run/containerd/x") && err.contains("tmpfs"),
            "{err}"
        );
        assert!(check_visible(Path::new("/tmp/clone")).is_ok());
        assert!(check_visible(Path::new("/runner/work")).is_ok());
    }

    #[test]
    fn script_quotes_and_changes_directory() {
        let spec = RunSpec {
            command: "echo hi".into(),
            cwd: "/work/it's".into(),
            env: vec![
                ("A".into(), "x y'z".into()),
                ("BAD-NAME".into(), "v".into()),
            ],
            rw_dirs: vec![],
            timeout: Duration::from_secs(1),
            memory_mib: 1024,
            cpus: 1,
            verbose: false,
        };
        let s = command_script(&spec);
        assert!(s.contains(r"export A='x y'\''z'"), "{s}");
        assert!(!s.contains("BAD-NAME"), "{s}");
        assert!(s.contains(r"cd '/work/it'\''s' || exit 125"), "{s}");
        assert!(s.ends_with("echo hi\n"), "{s}");
    }
}
