//! Guest losses that are the nested test host's, not husk's, told apart by their signature.
//!
//! - A guest that died or hung in early kernel setup: the shim's message carries
//!   [`EARLY_BOOT`] (from husk-vmm's milestone lines).
//! - A guest that triple faulted while the test host's KVM was delivering it a page fault on an
//!   instruction fetch from a page not present (or whose entry has a reserved bit set): the
//!   guest kernel's own text vanished under it.
//!   The test host's init records every SHUTDOWN exit its KVM sees (with the event being
//!   delivered) in the file `HUSK_TESTHOST_KVM_SHUTDOWNS` names; QEMU's microvm guests die with
//!   the same record (`scripts/boot-stress.sh`), and a guest kernel bug would oops on the console
//!   instead. `scripts/e2e-failure.py` reads the same signature from a binary's output.
//!
//! Whoever retries on one of these (as kubelet's pod sync would) announces it on stderr.

use std::time::{Duration, Instant};

use husk_protocol::vmm::EARLY_BOOT;

/// How long a triple fault's record may trail the shim's report of it.
const RECORD_DELAY: Duration = Duration::from_secs(10);

/// Words for a guest stuck in the fetch fault without the triple fault: the test host's KVM
/// re-injects the page fault, its emulator fails the same way, and the vCPU never runs guest
/// code again. husk-testhost prints them before each loop its init recorded, and the VMM
/// suites' stall report starts with them when its own VM's KVM trace shows the loop
/// ([`crate::stall`]). scripts/e2e-failure.py reads them.
pub const FETCH_LOOP: &str = "a guest is stuck in the test host's fetch fault (its KVM \
                              re-injects a page fault on an instruction fetch the guest cannot take)";

/// The shim's words for a VM that ended on a triple fault (hypervisor/src/vcpu.rs).
const TRIPLE_FAULT: &str = "triple fault";

/// The shim's log line for a VM that ended under running containers (shim/src/sandbox/watch.rs), which
/// carries husk-vmm's account of the end (a triple fault names itself).
pub const VM_ENDED: &str = "the sandbox VM ended unexpectedly";

/// The shim's warning for a template whose builder VM failed (shim/src/vm/template/build.rs),
/// which carries husk-vmm's account of the builder VM's end when it did not boot.
const TEMPLATE_BUILD_FAILED: &str = "making the template: ";

/// The shim's words for a guest whose agent does not answer its health check
/// (shim/src/vm/liveness.rs), which is what a guest stuck in the test host's fetch-fault loop
/// looks like from a pod until the liveness timeout kills it.
const HEALTH_CHECK_FAILED: [&str; 2] = [
    "the guest agent's health check failed",
    "the guest agent's health check timed out",
];

/// What a failed step's first line gets when its guest stopped answering: the words
/// scripts/e2e-failure.py (STOPPED_ANSWERING) accepts as the fetch-fault loss when the test
/// host also recorded a guest stuck in the loop.
pub const STOPPED_ANSWERING: &str = ", on a lost guest (the guest stopped answering)";

/// Whether a shim logged, in `shim_log`, that its guest's agent failed a health check.
pub fn guest_went_silent(shim_log: &str) -> bool {
    shim_log
        .lines()
        .any(|l| HEALTH_CHECK_FAILED.iter().any(|w| l.contains(w)))
}

/// Whether `text` (an error, an observation) names a triple fault.
pub fn names_triple_fault(text: &str) -> bool {
    text.contains(TRIPLE_FAULT)
}

/// Whether a shim logged, in `shim_log` (containerd's log), that one of its VMs (the pod's, or
/// the builder of a template) ended on a triple fault.
pub fn vm_ended_on_triple_fault(shim_log: &str) -> bool {
    shim_log.lines().any(|l| {
        (l.contains(VM_ENDED) || l.contains(TEMPLATE_BUILD_FAILED)) && names_triple_fault(l)
    })
}

/// Whether a `kvm_exit` trace line is a SHUTDOWN exit in the guest kernel's text while the
/// kernel's own memory was gone from under an event being delivered:
/// - a #PF (vector 14, with an error code: intr_info 0x80000b0e) for a supervisor instruction
///   fetch (error code bit 0x10 set, the user bit 0x4 clear): seen with 0x10 (page not present)
///   and 0x18 (a reserved bit set in a page table entry);
/// - an external interrupt (type 0, a vector of 32 or more: intr_info 0x800000xx), seen with the
///   local timer's 0xec in the middle of the page allocator: a running kernel whose IDT, GDT and
///   stacks took every interrupt before cannot shut down entering one unless they vanished.
///
/// A guest's own reboot by triple fault (int3 with no IDT: a software exception, 0x80000403) is
/// neither. scripts/e2e-failure.py applies the same rule.
fn is_fetch_fault(line: &str) -> bool {
    if !line.contains("reason shutdown rip 0xffffffff") {
        return false;
    }
    let Some((_, rest)) = line.split_once("intr_info 0x") else {
        return false;
    };
    let hex = |s: &str| -> Option<u32> {
        let h: String = s.chars().take_while(char::is_ascii_hexdigit).collect();
        u32::from_str_radix(&h, 16).ok()
    };
    let Some(info) = hex(rest) else {
        return false;
    };
    let code = rest
        .split_once("error_code 0x")
        .and_then(|(_, c)| hex(c))
        .unwrap_or(0);
    let (valid, kind, vector) = (info & 0x8000_0000 != 0, (info >> 8) & 7, info & 0xff);
    let fetch_fault = info == 0x8000_0b0e && code & 0x14 == 0x10;
    let interrupt = valid && kind == 0 && vector >= 32;
    fetch_fault || interrupt
}

/// Runs `steps`; if they panic, panics again with the first panic's message, `loss()` (the
/// words for a guest lost to the environment, or nothing) added to its first line, where
/// scripts/e2e-failure.py reads it. The first panic is not printed on its own, only inside
/// the second (the rule reads every panic's first line). Only the calling thread's panics are
/// held back; the e2e tests run one at a time (`--test-threads=1`).
pub fn naming<T>(loss: impl FnOnce() -> &'static str, steps: impl FnOnce() -> T) -> T {
    use std::sync::{Arc, Mutex};
    let first = Arc::new(Mutex::new(None::<String>));
    let previous = Arc::new(std::panic::take_hook());
    let (record, others) = (first.clone(), previous.clone());
    let mine = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        // Other threads' panics (a step's helper thread is joined, and its panic comes back
        // here) are printed as before.
        if std::thread::current().id() != mine {
            return others(info);
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        if let Ok(mut f) = record.lock() {
            f.get_or_insert(format!("{message}\n(first panic at {location})"));
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps));
    drop(std::panic::take_hook());
    match Arc::try_unwrap(previous) {
        Ok(hook) => std::panic::set_hook(hook),
        Err(shared) => std::panic::set_hook(Box::new(move |info| shared(info))),
    }
    match outcome {
        Ok(v) => v,
        Err(_) => {
            let first = first
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            let (line, rest) = first.split_once('\n').unwrap_or((&first, ""));
            panic!("{line}{}\n{rest}", loss())
        }
    }
}

/// How many fetch-fault shutdowns the test host's KVM has seen so far (0 outside the test host).
pub fn fetch_faults_seen() -> usize {
    let Some(path) = std::env::var_os("HUSK_TESTHOST_KVM_SHUTDOWNS") else {
        return 0;
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| is_fetch_fault(l))
        .count()
}

/// The environment's loss that `error` reports, if it is one: `faults_before` is
/// [`fetch_faults_seen`] from before the attempt that failed.
pub fn environment_loss(error: &str, faults_before: usize) -> Option<&'static str> {
    loss_within(error, faults_before, RECORD_DELAY)
}

fn loss_within(error: &str, faults_before: usize, wait: Duration) -> Option<&'static str> {
    if error.contains(EARLY_BOOT) {
        return Some("a guest died or hung in early kernel setup");
    }
    if !names_triple_fault(error) {
        return None;
    }
    // The record is written by the test host's init as KVM traces the exit, which can trail the
    // shim's report of the VM's end a little.
    let deadline = Instant::now() + wait;
    loop {
        if fetch_faults_seen() > faults_before {
            return Some("a guest triple faulted on the test host's instruction-fetch fault");
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Why an awaited console line never came, on the panic's first line, where `make e2e`'s
/// retry rule (scripts/e2e-failure.py) reads it: for a VM with virtio devices (`devices`), a
/// guest whose kernel set up none of them (no `DRIVER_READY` line from husk-vmm) died or hung
/// in early kernel setup ([`husk_protocol::vmm::EARLY_BOOT`]); for any VM, husk-vmm's account
/// of a triple fault, which the rule pairs with the test host's KVM record of the known fetch
/// fault. Then the console so far.
pub fn missing(what: &str, console: &str, devices: bool) -> String {
    use husk_protocol::vmm::{DRIVER_READY, RESTORED};
    let mut why = String::new();
    // A restored guest's drivers were set up before its snapshot: no DRIVER_READY line.
    if console.contains(RESTORED) {
        why.push_str(": the restored guest never got there");
    } else if devices && !console.contains(DRIVER_READY) {
        why.push_str(&format!(
            ": {EARLY_BOOT} (husk-vmm printed no {DRIVER_READY:?} line)"
        ));
    }
    if let Some(end) = console
        .lines()
        .find(|l| l.starts_with("husk-vmm: guest shut down") && names_triple_fault(l))
    {
        why.push_str(&format!("; the VM ended: {end}"));
    }
    format!("no {what}{why}:\n{console}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_guest_is_read_from_the_shims_health_checks() {
        assert!(guest_went_silent(
            "2026Z  WARN the guest agent's health check failed pid=373 error=agent check\n"
        ));
        assert!(guest_went_silent(
            "2026Z  WARN the guest agent's health check timed out pid=373\n"
        ));
        assert!(!guest_went_silent(
            "2026Z  INFO the guest agent is ready pid=373\n"
        ));
        // The words scripts/e2e-failure.py's STOPPED_ANSWERING looks for.
        assert!(STOPPED_ANSWERING.contains("the guest stopped answering"));
    }

    #[test]
    fn a_vm_end_on_a_triple_fault_is_read_from_the_shims_line() {
        let end = "2026Z ERROR the sandbox VM ended unexpectedly: the guest shut down (exit 0) \
                   (husk-vmm: guest shut down (vCPU 0: triple fault (reboot) at rip 0xfff0))";
        assert!(vm_ended_on_triple_fault(&format!("a\n{end}\nb\n")));
        assert!(!vm_ended_on_triple_fault(
            "2026Z  INFO husk-vmm: guest shut down (vCPU 0: triple fault)\n"
        ));
        assert!(!vm_ended_on_triple_fault(
            "2026Z ERROR the sandbox VM ended unexpectedly: husk-vmm stopped on signal 9\n"
        ));
        // A template's builder VM (CI of 2026-12-06: the test host's fetch fault under it).
        // husk-vmm's last words are quoted on the warning's own line, joined by " | ".
        let build = "2026Z  WARN making the template: the template VM did not boot: the guest \
                     shut down (exit 0); husk-vmm said: husk-vmm: vCPUs running; setup 727 ms \
                     | husk-vmm: guest shut down (vCPU 0: triple fault (reboot) at an unknown \
                     place) template=\"822a8efd1ecee897\"";
        assert!(vm_ended_on_triple_fault(build));
        // As the shim wrote it before (the second CI of 2026-12-06): the cause on a line of its
        // own is not the warning's, so it cannot be told from another VM's.
        assert!(!vm_ended_on_triple_fault(
            "2026Z  WARN making the template: the template VM did not boot: the guest shut down \
             (exit 0); husk-vmm said: husk-vmm: vCPUs running; setup 727 ms\n\
             husk-vmm: guest shut down (vCPU 0: triple fault (reboot))\n"
        ));
        assert!(!vm_ended_on_triple_fault(
            "2026Z  WARN making the template: writing the memory file: No space left on device\n"
        ));
    }

    #[test]
    fn a_missing_line_names_the_known_losses_on_its_first_line() {
        use husk_protocol::vmm::{DRIVER_READY, EARLY_BOOT};
        let shut = "husk-vmm: guest shut down (vCPU 0: triple fault (reboot) at rip 0xfff0)";
        let first = |m: String| m.lines().next().unwrap().to_string();
        // Devices and none ready: early boot; with a triple fault, both.
        let m = first(missing("marker", "Linux version 6.1\n", true));
        assert!(m.contains(EARLY_BOOT) && !m.contains("triple fault"), "{m}");
        let m = first(missing(
            "marker",
            &format!("Linux version 6.1\n{shut}\n"),
            true,
        ));
        assert!(m.contains(EARLY_BOOT) && m.contains("triple fault"), "{m}");
        // Past its drivers, or with none to set up: only a triple fault is named.
        let late = format!("{DRIVER_READY} virtio-net\nFreeing unused kernel image\n{shut}\n");
        let m = first(missing("marker", &late, true));
        assert!(!m.contains(EARLY_BOOT) && m.contains("triple fault"), "{m}");
        let m = first(missing("init marker", "Linux version 6.1\n", false));
        assert_eq!(m, "no init marker:");
        // A restored guest has no DRIVER_READY lines and did not die in early boot.
        let restored = format!("{} /tmp/snap\n", husk_protocol::vmm::RESTORED);
        let m = first(missing("a tick", &restored, true));
        assert!(!m.contains(EARLY_BOOT) && m.contains("restored"), "{m}");
    }

    #[test]
    fn a_failed_step_names_the_loss_on_its_first_line() {
        let caught = std::panic::catch_unwind(|| {
            naming(
                || ", on a guest lost to a triple fault",
                || assert_eq!(1 + 1, 3, "the hog's status"),
            )
        })
        .unwrap_err();
        let msg = caught.downcast_ref::<String>().unwrap();
        let first = msg.lines().next().unwrap();
        assert!(
            first.contains("the hog's status")
                && first.ends_with("on a guest lost to a triple fault"),
            "{msg}"
        );
        assert!(msg.contains("first panic at"), "{msg}");
        // Nothing lost, nothing added; a step that passes returns its value.
        let caught = std::panic::catch_unwind(|| naming(|| "", || panic!("plain"))).unwrap_err();
        assert_eq!(
            caught.downcast_ref::<String>().unwrap().lines().next(),
            Some("plain")
        );
        assert_eq!(naming(|| "", || 7), 7);
    }

    #[test]
    fn only_a_fetch_fault_delivery_is_the_signature() {
        let fetch = "vcpu0-293 [001] ..... 8.7: kvm_exit: vcpu 0 reason shutdown rip \
                     0xffffffff81246c37 info1 0x0 info2 0x0 intr_info 0x80000b0e error_code 0x00000010";
        assert!(is_fetch_fault(fetch));
        // A reserved bit in the page table entry of the fetch: the same vanished text.
        assert!(is_fetch_fault(
            &fetch.replace("error_code 0x00000010", "error_code 0x00000018")
        ));
        // A data access (no I/D bit) or a user-mode fetch is not the signature.
        assert!(!is_fetch_fault(
            &fetch.replace("error_code 0x00000010", "error_code 0x00000000")
        ));
        assert!(!is_fetch_fault(
            &fetch.replace("error_code 0x00000010", "error_code 0x00000014")
        ));
        // A guest's own reboot by triple fault (reboot=t: int3 with no IDT).
        let reboot = "vcpu0-293 [001] ..... 8.7: kvm_exit: vcpu 0 reason shutdown rip \
                      0xffffffff8101f410 info1 0x0 info2 0x0 intr_info 0x80000403 error_code 0x00000000";
        assert!(!is_fetch_fault(reboot));
        // Entering the local timer's interrupt (vector 0xec, no error code).
        assert!(is_fetch_fault(&fetch.replace(
            "0x80000b0e error_code 0x00000010",
            "0x800000ec error_code 0x00000000"
        )));
        // An NMI (type 2) or a #GP being delivered is not the signature.
        assert!(!is_fetch_fault(&fetch.replace(
            "0x80000b0e error_code 0x00000010",
            "0x80000202 error_code 0x00000000"
        )));
        assert!(!is_fetch_fault(&fetch.replace("0x80000b0e", "0x80000b0d")));
        // A fetch fault in user space is not the kernel's text vanishing.
        assert!(!is_fetch_fault(
            &fetch.replace("0xffffffff81246c37", "0x401000")
        ));
    }

    #[test]
    fn a_triple_fault_without_the_signature_is_not_forgiven() {
        let msg =
            "exec: the VM ended: guest shut down (vCPU 0: triple fault (reboot) at rip 0xfff0)";
        assert_eq!(loss_within(msg, fetch_faults_seen(), Duration::ZERO), None);
        assert!(environment_loss(&format!("boot: {EARLY_BOOT}"), 0).is_some());
    }
}
