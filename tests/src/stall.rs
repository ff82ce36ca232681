//! What the host side of a stalled VM shows, for a test's failure message: husk-vmm's threads
//! (state, CPU time over a second, a vCPU's kernel stack) and, where tracefs is writable (the
//! nested test host), two seconds of KVM's own events for it. A vCPU thread that sleeps in
//! `kvm_vcpu_halt` with an interrupt pending and no injection in the trace is a wake-up the
//! hypervisor under the guest lost; one that burns a CPU with no exits is a guest spinning with
//! interrupts off; exits without progress are a device.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::guest_loss::FETCH_LOOP;

const TRACEFS: &str = "/sys/kernel/tracing";
/// Instruction-fetch page faults KVM injects in two seconds that make a loop (an ordinary guest
/// gets none; the loop runs at thousands a second).
const FETCH_LOOP_MIN: usize = 100;

/// (name, state, CPU ticks) of each thread of `pid`, by thread id.
fn threads(pid: u32) -> BTreeMap<u32, (String, String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ... utime stime": comm may hold spaces, so split after the ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let state = rest.first().copied().unwrap_or("?").to_string();
        // After the ')': state is field 0, utime 11, stime 12.
        out.insert(tid, (comm, state, ticks(11) + ticks(12)));
    }
    out
}

/// husk-vmm's threads: name, state, CPU ticks used over one second, and each vCPU thread's
/// kernel stack (its top frames).
pub fn vmm_threads(pid: u32) -> String {
    let before = threads(pid);
    std::thread::sleep(Duration::from_secs(1));
    let after = threads(pid);
    if after.is_empty() {
        return format!("husk-vmm {pid} has no threads left");
    }
    let mut parts = Vec::new();
    for (tid, (comm, state, ticks)) in &after {
        let used = ticks.saturating_sub(before.get(tid).map_or(*ticks, |b| b.2));
        let mut part = format!("{comm}[{tid}] {state} {used} ticks/s");
        if comm.starts_with("vcpu") {
            let stack =
                fs::read_to_string(format!("/proc/{pid}/task/{tid}/stack")).unwrap_or_default();
            let frames: Vec<&str> = stack
                .lines()
                .take(4)
                .filter_map(|l| l.split_whitespace().nth(1))
                .collect();
            if !frames.is_empty() {
                part.push_str(&format!(" in {}", frames.join("<")));
            }
        }
        parts.push(part);
    }
    parts.join(", ")
}

/// Two seconds of KVM's tracepoints (all of them, in a trace instance of its own so the test
/// host's shutdown record is untouched): a count per event and vCPU thread, then the last lines.
/// `None` where tracefs is not there or not writable (a plain host without root).
pub fn kvm_events(pid: u32) -> Option<String> {
    let root = Path::new(TRACEFS);
    if !root.join("events/kvm").is_dir() {
        return None;
    }
    let dir = root.join(format!("instances/husk-stall-{pid}"));
    fs::create_dir(&dir).ok()?;
    let trace = (|| -> std::io::Result<String> {
        fs::write(dir.join("buffer_size_kb"), "4096")?;
        fs::write(dir.join("events/kvm/enable"), "1")?;
        std::thread::sleep(Duration::from_secs(2));
        fs::write(dir.join("tracing_on"), "0")?;
        fs::read_to_string(dir.join("trace"))
    })();
    let _ = fs::write(dir.join("events/kvm/enable"), "0");
    let _ = fs::remove_dir(&dir);
    let trace = match trace {
        Ok(t) => t,
        Err(e) => return Some(format!("(tracing KVM failed: {e})")),
    };
    let lines: Vec<&str> = trace.lines().filter(|l| !l.starts_with('#')).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in &lines {
        // "   vcpu0-1234  [001] d..1.  12.345: kvm_exit: vcpu 0 reason hlt rip ..."
        let task = line.split_whitespace().next().unwrap_or("?");
        let task = task.rsplit_once('-').map_or(task, |(name, _)| name);
        let Some((_, after)) = line.split_once(": ") else {
            continue;
        };
        let event = after.split(':').next().unwrap_or("?");
        let mut key = format!("{task} {event}");
        if event == "kvm_exit" {
            if let Some(reason) = after.split(" reason ").nth(1) {
                key.push_str(&format!(
                    "({})",
                    reason.split_whitespace().next().unwrap_or("?")
                ));
            }
        }
        *counts.entry(key).or_default() += 1;
    }
    // The test host's fetch-fault loss without the triple fault: KVM injecting the same
    // instruction-fetch #PF over and over (see crate::guest_loss::FETCH_LOOP).
    let fetch_injections = lines
        .iter()
        .filter(|l| {
            l.contains("kvm_inj_exception: #PF (0x10)")
                || l.contains("kvm_inj_exception: #PF (0x18)")
        })
        .count();
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    let tail: Vec<&str> = lines.iter().rev().take(12).rev().copied().collect();
    let stuck = if fetch_injections >= FETCH_LOOP_MIN {
        format!("{FETCH_LOOP}: {fetch_injections} injections in 2 s; ")
    } else {
        String::new()
    };
    Some(format!(
        "{stuck}KVM events in 2 s: {} | last: {}",
        if summary.is_empty() {
            "none".to_string()
        } else {
            summary.join(", ")
        },
        tail.iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(" / ")
    ))
}

/// Both reports, for a failure message; it starts with [`FETCH_LOOP`] when the KVM trace shows
/// the test host's fetch-fault loop.
pub fn report(pid: u32) -> String {
    let threads = vmm_threads(pid);
    match kvm_events(pid) {
        Some(events) if events.starts_with(FETCH_LOOP) => {
            format!("{events}; husk-vmm threads: {threads}")
        }
        Some(events) => format!("husk-vmm threads: {threads}; {events}"),
        None => format!("husk-vmm threads: {threads}"),
    }
}
