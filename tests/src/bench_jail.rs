//! `husk-bench jail`: what husk-vmm's jail costs at boot. Interleaved boots of two husk-vmm
//! binaries with the same kernel and initramfs: the one under test (jailed, filtered) and a
//! baseline built from an earlier commit (`--baseline-vmm`, e.g. the commit before the jail).
//! Both get a control socket and a vsock device, as under the shim, so the jail has its socket
//! directory to bind. Reported: each side's median boot_ms and its spread (min and max), and
//! their ratio; the jail costs nothing measurable when the medians differ by less than the
//! spread.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::bench::{self, Record};
use crate::microvm::{
    husk_vmm_with, watch_boot, GuestSpec, VmmOptions, VsockOptions, TEST_INIT_MARKER,
};

fn boot_ms(vmm: &Path, spec: &GuestSpec, dir: &Path) -> anyhow::Result<f64> {
    let socket = dir.join("vsock");
    let control = dir.join("ctl");
    let opts = VmmOptions {
        control_socket: Some(&control),
        vsock: Some(VsockOptions {
            guest_cid: 3,
            socket: &socket,
            allowed_guest_ports: &[],
        }),
        balloon: false,
        ..Default::default()
    };
    let cmd = husk_vmm_with(vmm, spec, dir, &opts)?;
    crate::bench::recycle_freed_pages()?;
    let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(180))?;
    match (r.to_marker, r.exit_code) {
        (Some(t), Some(0)) => Ok(t.as_secs_f64() * 1000.0),
        _ => bail!(
            "{}: the boot did not reach the marker and exit cleanly (exit {:?}); console:\n{}",
            vmm.display(),
            r.exit_code,
            r.console
        ),
    }
}

fn spread(v: &[f64]) -> (f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// `runs` interleaved boots of `jailed` and `baseline` (after one warm-up boot each).
pub fn run(
    jailed: &Path,
    baseline: &Path,
    spec: &GuestSpec,
    runs: usize,
) -> anyhow::Result<Vec<Record>> {
    let dir = tempfile::tempdir()?;
    boot_ms(jailed, spec, dir.path()).context("warm-up boot (jailed)")?;
    boot_ms(baseline, spec, dir.path()).context("warm-up boot (baseline)")?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternating which goes first, so a drift in load hits both alike.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for jailed_turn in order {
            let (vmm, out) = if jailed_turn {
                (jailed, &mut a)
            } else {
                (baseline, &mut b)
            };
            out.push(boot_ms(vmm, spec, dir.path()).with_context(|| format!("boot {}", i + 1))?);
        }
        eprintln!(
            "husk-bench: jail run {}: jailed {:.0} ms, baseline {:.0} ms",
            i + 1,
            a[i],
            b[i]
        );
    }
    let (amin, amax) = spread(&a);
    let (bmin, bmax) = spread(&b);
    eprintln!(
        "husk-bench: jail: jailed median {:.0} ms ({amin:.0}..{amax:.0}), baseline median {:.0} ms ({bmin:.0}..{bmax:.0})",
        bench::median(&a).unwrap_or(f64::NAN),
        bench::median(&b).unwrap_or(f64::NAN)
    );
    let record = |metric: &str, husk: Option<f64>, anchor: Option<f64>| {
        Record {
            bench: "jail".into(),
            metric: metric.into(),
            unit: "ms".into(),
            husk,
            anchor: "husk-vmm before the jail".into(),
            anchor_value: anchor,
            ratio: None,
            runs,
            host: bench::host_label().into(),
        }
        .with_ratio()
    };
    Ok(vec![
        record("boot_ms", bench::median(&a), bench::median(&b)),
        record("boot_ms_min", Some(amin), Some(bmin)),
        record("boot_ms_max", Some(amax), Some(bmax)),
    ])
}
