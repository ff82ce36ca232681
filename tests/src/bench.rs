//! Benchmark statistics and the results file (`target/bench/results.jsonl`, one JSON object a line).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

/// One measured metric, husk against its anchor, as `make bench` records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Benchmark name (`boot-qemu`, `vmm`, ...).
    pub bench: String,
    /// Metric name (`boot_ms`, ...).
    pub metric: String,
    /// Unit of `husk` and `anchor_value`.
    pub unit: String,
    /// husk's value; `None` where the benchmark measures only the anchor.
    pub husk: Option<f64>,
    /// What husk is compared against (`qemu-microvm`, `runc`).
    pub anchor: String,
    /// The anchor's value.
    pub anchor_value: Option<f64>,
    /// husk / anchor, when both exist.
    pub ratio: Option<f64>,
    /// Runs behind each value.
    pub runs: usize,
    /// `native` or `nested` (inside the test host, at emulation speed).
    pub host: String,
}

impl Record {
    /// Fills in `ratio` from the two values.
    /// A husk-against-runc record of `bench` (the ratio filled in).
    pub fn versus_runc(
        bench: &str,
        metric: &str,
        unit: &str,
        husk: Option<f64>,
        runc: Option<f64>,
        runs: usize,
    ) -> Record {
        Record {
            bench: bench.into(),
            metric: metric.into(),
            unit: unit.into(),
            husk,
            anchor: "runc".into(),
            anchor_value: runc,
            ratio: None,
            runs,
            host: host_label().into(),
        }
        .with_ratio()
    }

    pub fn with_ratio(mut self) -> Self {
        self.ratio = match (self.husk, self.anchor_value) {
            (Some(h), Some(a)) if a > 0.0 => Some(h / a),
            _ => None,
        };
        self
    }
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// `native` or `nested`, as seen from inside the run.
pub fn host_label() -> &'static str {
    if std::env::var_os("HUSK_IN_TESTHOST").is_some() {
        "nested"
    } else {
        "native"
    }
}

/// Appends records to the results file, creating it and its directory.
pub fn append(path: &Path, records: &[Record]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    for r in records {
        writeln!(
            f,
            "{}",
            serde_json::to_string(r).map_err(std::io::Error::other)?
        )?;
    }
    Ok(())
}

/// How much memory [`recycle_freed_pages`] writes on each CPU: the bench guests' RAM, so that
/// with one share per CPU it takes in every page the previous VMM process freed (the allocator
/// hands out recently freed pages first, from per-CPU lists before the shared ones).
const RECYCLE_MIB_PER_CPU: usize = 256;

/// Writes and frees [`RECYCLE_MIB_PER_CPU`] of fresh memory on every CPU, so that the next VM
/// boots on pages that no earlier guest ran code from. Called before each timed boot, for
/// husk-vmm and its anchor alike.
///
/// Why: in the nested test host, the emulator below (QEMU TCG) keeps translated code per
/// physical page, and the first write to a page that held code a previous guest ran costs the
/// invalidation of those translations. A VM that boots right after another one inherits that
/// cost as 0.5–0.8 s of stalls wherever it first writes recycled pages (loading the kernel,
/// the guest's own early boot): measured, boots after the first took 1.6–1.8 s instead of
/// 0.8 s, in a random phase. Hardware has no such cost, so the bench leaves it out, for both
/// VMMs, outside the timed part.
pub fn recycle_freed_pages() -> std::io::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..cpus)
            .map(|cpu| s.spawn(move || populate_on(cpu, RECYCLE_MIB_PER_CPU << 20)))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("panicked")))
        })
    })
}

/// On CPU `cpu` (this thread pinned there), maps, populates and unmaps `len` bytes.
fn populate_on(cpu: usize, len: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET sets one bit of `set`; `cpu` is below the machine's CPU count.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pins only the calling thread (pid 0) to the set built above.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choice; MAP_POPULATE
    // makes the kernel allocate and zero every page. Nothing in this process refers to it.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `addr` is the start of the `len`-byte mapping made above, used by nothing else.
    if unsafe { libc::munmap(addr, len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Memory of a process from /proc/<pid>/smaps, in KiB: (PSS outside guest RAM, RSS of guest RAM).
/// Guest RAM is every mapping at least `guest_ram_kib` large, which works for any VMM.
pub fn vmm_memory_kib(pid: u32, guest_ram_kib: u64) -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(parse_smaps(&text, guest_ram_kib))
}

/// The arithmetic of [`vmm_memory_kib`] on smaps text.
pub fn parse_smaps(text: &str, guest_ram_kib: u64) -> (u64, u64) {
    let (mut overhead, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    let field = |line: &str| {
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        if line.starts_with("Size:") {
            in_guest = field(line) >= guest_ram_kib;
        } else if line.starts_with("Pss:") && !in_guest {
            overhead += field(line);
        } else if line.starts_with("Rss:") && in_guest {
            guest += field(line);
        }
    }
    (overhead, guest)
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

/// A plain-text table of records.
pub fn table(records: &[Record]) -> String {
    let mut out = format!(
        "{:<12} {:<18} {:>10} {:>14} {:>12} {:>7} {:>5} {}\n",
        "bench", "metric", "husk", "anchor", "anchor value", "ratio", "runs", "host"
    );
    for r in records {
        out.push_str(&format!(
            "{:<12} {:<18} {:>10} {:>14} {:>12} {:>7} {:>5} {}\n",
            r.bench,
            format!("{} ({})", r.metric, r.unit),
            cell(r.husk),
            r.anchor,
            cell(r.anchor_value),
            r.ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.runs,
            r.host
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn smaps_split_guest_ram_from_overhead() {
        let text = "\
00400000-00500000 r-xp 00000000 08:01 1 /usr/bin/vmm
Size:               1024 kB
Rss:                 900 kB
Pss:                 450 kB
7f0000000000-7f0010000000 rw-s 00000000 00:01 2 /memfd:husk-guest-ram (deleted)
Size:             262144 kB
Rss:               20000 kB
Pss:               20000 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 100 kB
Pss:                 100 kB
";
        assert_eq!(parse_smaps(text, 256 * 1024), (550, 20000));
    }

    #[test]
    fn records_append_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench/results.jsonl");
        let r = Record {
            bench: "vmm".into(),
            metric: "boot_ms".into(),
            unit: "ms".into(),
            husk: Some(50.0),
            anchor: "qemu-microvm".into(),
            anchor_value: Some(200.0),
            ratio: None,
            runs: 5,
            host: "nested".into(),
        }
        .with_ratio();
        append(&path, std::slice::from_ref(&r)).unwrap();
        append(&path, &[r]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["ratio"], 0.25);
        for key in [
            "bench",
            "metric",
            "unit",
            "husk",
            "anchor",
            "anchor_value",
            "ratio",
            "runs",
            "host",
        ] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
    }
}
