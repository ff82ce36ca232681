//! A diagnostic of `make bench BENCH=cri`: with `HUSK_BENCH_TRACE=1`, each restored pod's start
//! is recorded from the test host's side as scripts/probe/trace-restore.sh records a `ctr run`'s
//! (its KVM exits, entries and nested page faults, its scheduler's switches and wake-ups, on the
//! monotonic clock, in a trace instance of its own), into target/bench/trace in the layout
//! scripts/probe/trace-restore.py reads. It slows what it records: a traced run's figures are
//! for reading one start, never for the results.

use std::path::{Path, PathBuf};

use crate::containerd::Containerd;

/// The trace instance, beside the test host's init's use of the main buffer.
const INSTANCE: &str = "/sys/kernel/tracing/instances/husk-bench";
/// What is recorded.
const EVENTS: [&str; 5] = [
    "kvm/kvm_exit",
    "kvm/kvm_entry",
    "kvm/kvm_page_fault",
    "sched/sched_switch",
    "sched/sched_wakeup",
];
/// The shim's lines that mark a window (husk-vmm's start, its `vCPUs running`, the answer).
const MARKS: [&str; 3] = ["husk-vmm started", "vCPUs running", "guest agent is ready"];

/// The recording, when asked for.
pub struct Trace {
    out: PathBuf,
    round: usize,
}

impl Trace {
    /// A recording into `dir` when `HUSK_BENCH_TRACE` names it (`make bench` passes
    /// target/bench/trace when `HUSK_BENCH_TRACE=1`); a failure to set it up is said and
    /// leaves the bench untraced.
    pub fn from_env() -> Option<Trace> {
        let out = PathBuf::from(std::env::var_os("HUSK_BENCH_TRACE")?);
        match Trace::start(&out) {
            Ok(t) => {
                eprintln!("husk-bench: tracing restored pods into {}", out.display());
                Some(t)
            }
            Err(e) => {
                eprintln!("husk-bench: not tracing ({}): {e}", out.display());
                None
            }
        }
    }

    fn start(out: &Path) -> std::io::Result<Trace> {
        std::fs::create_dir_all(out)?;
        for old in std::fs::read_dir(out)? {
            let old = old?.path();
            let name = old.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("trace-") || name == "log.txt" || name == "offset" {
                std::fs::remove_file(&old)?;
            }
        }
        std::fs::create_dir_all(INSTANCE)?;
        std::fs::write(out.join("offset"), format!("{}\n", wall_minus_monotonic()))?;
        Ok(Trace {
            out: out.to_path_buf(),
            round: 0,
        })
    }

    /// Runs `f` (one restored pod's start) recorded; the shim's marks of it go to log.txt.
    pub fn around<T>(&mut self, c: &Containerd, f: impl FnOnce() -> T) -> T {
        let from = c.log_len();
        if let Err(e) = self.on() {
            eprintln!("husk-bench: trace: starting: {e}");
        }
        let out = f();
        let _ = set(Path::new(INSTANCE).join("tracing_on"), "0");
        self.round += 1;
        if let Err(e) = self.keep(c, from) {
            eprintln!("husk-bench: trace: keeping round {}: {e}", self.round);
        }
        out
    }

    fn on(&self) -> std::io::Result<()> {
        let i = Path::new(INSTANCE);
        set(i.join("tracing_on"), "0")?;
        set(i.join("trace"), "")?;
        set(i.join("buffer_size_kb"), "40000")?;
        set(i.join("trace_clock"), "mono")?;
        for e in EVENTS {
            set(i.join("events").join(e).join("enable"), "1")?;
        }
        set(i.join("tracing_on"), "1")
    }

    fn keep(&self, c: &Containerd, from: u64) -> std::io::Result<()> {
        let mut lines = Vec::new();
        for cpu in std::fs::read_dir(Path::new(INSTANCE).join("per_cpu"))? {
            let text = std::fs::read_to_string(cpu?.path().join("trace"))?;
            lines.extend(
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(String::from),
            );
        }
        // Each CPU's buffer is in order; the file is in the clock's order across them.
        lines.sort_by(|a, b| stamp(a).total_cmp(&stamp(b)));
        let n = self.round;
        std::fs::write(self.out.join(format!("trace-{n}.txt")), lines.join("\n"))?;
        let marks: String = c
            .log_since(from)
            .lines()
            .filter(|l| MARKS.iter().any(|m| l.contains(m)))
            .map(|l| format!("{}\n", l.chars().take(400).collect::<String>()))
            .collect();
        let log = self.out.join("log.txt");
        let mut all = std::fs::read_to_string(&log).unwrap_or_default();
        all.push_str(&marks);
        std::fs::write(log, all)?;
        eprintln!("husk-bench: trace: round {n}: {} events", lines.len());
        Ok(())
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        for e in EVENTS {
            let _ = set(
                Path::new(INSTANCE).join("events").join(e).join("enable"),
                "0",
            );
        }
        let _ = std::fs::remove_dir(INSTANCE);
    }
}

fn set(path: PathBuf, value: &str) -> std::io::Result<()> {
    std::fs::write(&path, value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A trace line's time stamp (`... [001] d..2.  123.456789: event: ...`).
fn stamp(line: &str) -> f64 {
    line.split(": ")
        .next()
        .and_then(|head| head.split_whitespace().last())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0)
}

/// The wall clock minus the monotonic clock, in seconds: lines the shim's log (wall clock) up
/// with the trace (monotonic).
fn wall_minus_monotonic() -> f64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given, a local that outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    wall - (ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_sort_by_their_stamp() {
        let a = "  husk-vmm-301  [001] d..2.   912.000120: kvm_exit: vcpu 0 reason npf";
        let b = "  <idle>-0      [000] d..3.   911.999870: sched_switch: prev_comm=swapper";
        assert!(stamp(b) < stamp(a));
        assert_eq!(stamp(a), 912.000120);
        assert_eq!(stamp("garbage"), 0.0);
    }
}
