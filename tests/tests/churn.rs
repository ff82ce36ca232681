//! Churn, as a node sees it over months (husk_tests::churn): pods in parallel, each created,
//! exec'd into, stopped and removed, cycle after cycle; afterwards nothing husk made is left
//! (the shared leak check) and containerd's open descriptors are back where they started. As
//! on a node with husk's default config, the pods restore a VM template (nine in ten at least
//! must have; the others booted).
//!
//! `HUSK_CHURN_PODS` × `HUSK_CHURN_CYCLES` (default 10 × 10; 5 × 8 in the nested test host,
//! whose own kernel dies under VMs cycling in parallel). Each cycle prints its time and the
//! end the host's available memory before and after; `make bench BENCH=churn` records those
//! next to runc's (nested times are not results).
//!
//! End-to-end test (`#[ignore]`d): it runs in the nested test host.

use husk_tests::churn::{self, Churn};

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn pods_churned_in_parallel_leave_nothing_behind() {
    let churn = Churn::from_env();
    let report = churn::run(churn, "husk");
    assert!(
        report.failures.is_empty(),
        "pods failed: {:#?}\ncontainerd's log: {:?}",
        report.failures,
        report.saved_log
    );
    report.leaks.unwrap();
    // A pod whose restore failed boots instead (and says why in the log, printed above): most
    // must have restored, or this churned cold boots.
    let pods = churn.pods * churn.cycles;
    assert!(
        report.restored * 10 >= pods * 9,
        "{} of {pods} pods restored the template",
        report.restored
    );
    let (before, after) = report.fds;
    assert!(
        after <= before,
        "containerd holds {after} descriptors, {before} before the churn"
    );
}
