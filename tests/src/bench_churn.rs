//! `husk-bench churn`: [`crate::churn`] under runc, then under husk, on containerds of their
//! own. Recorded: the median cycle time (with the spread on stderr), how much host memory and
//! how many containerd descriptors the churn left behind (the target for both: nothing), and
//! how many pods failed.

use anyhow::bail;

use crate::bench::{self, Record};
use crate::churn::{self, Churn, Report};

fn growth_mib(r: &Report) -> f64 {
    (r.mem_available_kib.0 as f64 - r.mem_available_kib.1 as f64) / 1024.0
}

fn fd_growth(r: &Report) -> f64 {
    r.fds.1 as f64 - r.fds.0 as f64
}

fn spread(r: &Report) -> (f64, f64) {
    let min = r.cycle_ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.cycle_ms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Both sides, runc first.
pub fn run() -> anyhow::Result<Vec<Record>> {
    let shape = Churn::from_env();
    let runc = churn::run(shape, "runc");
    let husk = churn::run(shape, "husk");
    for (name, r) in [("runc", &runc), ("husk", &husk)] {
        let (min, max) = spread(r);
        eprintln!(
            "husk-bench: churn[{name}]: {} cycles of {} pods, cycle {min:.0}..{max:.0} ms, \
             {} failed, leaks: {:?}",
            r.cycle_ms.len(),
            shape.pods,
            r.failures.len(),
            r.leaks
        );
        if let Err(e) = &r.leaks {
            bail!("churn[{name}] left something behind: {e}");
        }
    }
    let record = |metric: &str, unit: &str, f: &dyn Fn(&Report) -> Option<f64>| {
        Record::versus_runc("churn", metric, unit, f(&husk), f(&runc), shape.cycles)
    };
    Ok(vec![
        record("cycle_ms", "ms", &|r| bench::median(&r.cycle_ms)),
        record("mem_growth_mib", "MiB", &|r| Some(growth_mib(r))),
        record("containerd_fd_growth", "fds", &|r| Some(fd_growth(r))),
        record("failed_pods", "pods", &|r| Some(r.failures.len() as f64)),
    ])
}
