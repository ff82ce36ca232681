//! Why a VM's agent never answered, in words a user can act on: read from husk-vmm's stderr
//! (its setup errors and how the guest ended), the guest console and how the readiness poll
//! went.

use husk_protocol::vmm::EARLY_BOOT;

use super::spawn::Tail;
#[cfg(test)]
use super::spawn::TAIL_LINES;
use crate::agent::NotReady;

/// Setup failures, recognised on husk-vmm's `error:` lines only: its other lines (the setup
/// timeline names the kernel and initramfs phases) say nothing went wrong.
const SETUP_ERRORS: [(&str, &str); 5] = [
    ("kernel", "husk-vmm could not load the guest kernel"),
    (
        "initramfs",
        "husk-vmm could not load the guest image (initramfs)",
    ),
    ("vsock", "husk-vmm could not set up its vsock device"),
    (
        "virtio-fs",
        "husk-vmm could not set up its virtio-fs device",
    ),
    ("/dev/kvm", "husk-vmm could not use /dev/kvm"),
];

/// Why the agent did not come up, from what the VM said.
pub fn diagnose(console: &Tail, stderr: &Tail, wait: &NotReady) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error:")).collect();
    for (needle, cause) in SETUP_ERRORS {
        if let Some(line) = errors.iter().find(|l| l.contains(needle)) {
            return format!("{cause} ({line})");
        }
    }
    if let Some(line) = console.find("Kernel panic") {
        if line.contains("No working init") || line.contains("VFS") {
            return format!(
                "the guest image has no usable /init: is it a husk-agent initramfs? ({line})"
            );
        }
        return format!("the guest kernel panicked ({line})");
    }
    // How far the guest's boot got: its drivers set up husk-vmm's devices at device init. A
    // restored guest had them set up before its snapshot.
    let ready = husk_protocol::vmm::DRIVER_READY;
    let vcpus_ran = stderr.reached(husk_protocol::vmm::VCPUS_RUNNING);
    if stderr.reached(husk_protocol::vmm::RESTORED) {
        if let Some(line) = stderr.find("guest shut down") {
            return format!("the restored guest reset itself before its agent answered ({line})");
        }
        if let Some(line) = errors.first() {
            return format!("husk-vmm failed ({line})");
        }
        return format!(
            "the restored guest's agent did not answer (vCPUs {}); console: {}",
            if vcpus_ran { "ran" } else { "never ran" },
            console.lines().last().unwrap_or("(nothing)")
        );
    }
    if let Some(line) = stderr.find("guest shut down") {
        if vcpus_ran && !stderr.reached(ready) {
            return format!(
                "{EARLY_BOOT}: it reset itself before its kernel set up any virtio device, with \
                 no kernel panic on the console: a triple fault ends a VM this way ({line})"
            );
        }
        return format!(
            "the guest reset itself before its agent answered, with no kernel panic on the \
             console ({line})"
        );
    }
    if let Some(line) = errors.first() {
        return format!("husk-vmm failed ({line})");
    }
    if !wait.socket_seen {
        return "husk-vmm never created its vsock socket (does this husk-vmm have virtio-vsock?)"
            .into();
    }
    if wait.connected {
        return "the agent accepted a connection on vsock port 1024 but did not answer Check"
            .into();
    }
    if vcpus_ran && !stderr.reached(ready) {
        return format!(
            "{EARLY_BOOT}: its kernel set up none of its virtio devices (husk-vmm printed no \
             `{ready}` line); console: {}",
            console.lines().last().unwrap_or("(nothing)")
        );
    }
    if vcpus_ran && !stderr.reached(&format!("{ready} virtio-vsock")) {
        return format!(
            "the guest kernel set up its other virtio devices but never its vsock device: does \
             it have virtio-vsock (CONFIG_VIRTIO_VSOCKETS)? ({})",
            stderr.find(ready).unwrap_or_default()
        );
    }
    if console.is_empty() {
        return "nothing answered on vsock port 1024 and the guest console is empty \
                (is the kernel a husk guest kernel with virtio-vsock? `quiet` hides boot messages)"
            .into();
    }
    "the guest booted but nothing answered on vsock port 1024 \
     (is the image a husk-agent initramfs, and does the kernel have virtio-vsock?)"
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(mut t: Tail, lines: &[&str]) -> Tail {
        for l in lines {
            t.push((*l).to_string());
        }
        t
    }

    /// A console tail.
    fn tail(lines: &[&str]) -> Tail {
        fill(Tail::default(), lines)
    }

    /// A husk-vmm stderr tail.
    fn vmm(lines: &[&str]) -> Tail {
        fill(Tail::vmm_stderr(), lines)
    }

    fn waited(socket_seen: bool, connected: bool) -> NotReady {
        NotReady {
            last_error: String::new(),
            socket_seen,
            connected,
        }
    }

    const TIMELINE: &str = "husk-vmm: vCPUs running; setup 1154 ms (vm+memory 110 ms, \
                            devices 148 ms, kernel 498 ms, initramfs 346 ms, vcpus 51 ms)";
    const VSOCK_READY: &str = "husk-vmm: guest driver ready: virtio-vsock";

    #[test]
    fn a_guest_that_never_set_up_vsock_died_in_early_boot_however_long_ago() {
        let mut stderr = vmm(&[TIMELINE]);
        let console = tail(&["[    0.5] pps_core: LinuxPPS API ver. 1 registered"]);
        let why = diagnose(&console, &stderr, &waited(true, false));
        assert!(
            why.starts_with(EARLY_BOOT) && why.contains("pps_core"),
            "{why}"
        );
        // Another device but not vsock: the kernel, not the boot.
        stderr.push("husk-vmm: guest driver ready: virtio-fs".into());
        let why = diagnose(&console, &stderr, &waited(true, false));
        assert!(why.contains("CONFIG_VIRTIO_VSOCKETS"), "{why}");
        // The vsock line, then more than a tail's worth of later lines.
        stderr.push(VSOCK_READY.into());
        for i in 0..2 * TAIL_LINES {
            stderr.push(format!("husk-vmm: warning: {i}"));
        }
        let why = diagnose(&tail(&[]), &stderr, &waited(true, false));
        assert!(!why.contains(EARLY_BOOT), "{why}");
    }

    #[test]
    fn a_restored_guest_that_never_answers_did_not_die_in_early_boot() {
        let stderr = vmm(&[
            "husk-vmm: restored a snapshot: /var/lib/husk/templates/0123456789abcdef",
            "husk-vmm: vCPUs running; setup 107 ms (vm 71 ms, devices 7 ms, jail 16 ms, vcpus 11 ms)",
        ]);
        let why = diagnose(&tail(&[]), &stderr, &waited(true, false));
        assert!(!why.contains(EARLY_BOOT), "{why}");
        assert!(why.contains("restored guest"), "{why}");
    }

    #[test]
    fn the_e2e_scripts_recognise_the_early_boot_text() {
        let script = include_str!("../../../scripts/e2e-failure.py");
        assert!(
            script.contains(EARLY_BOOT),
            "scripts/e2e-failure.py lost {EARLY_BOOT:?}"
        );
    }

    #[test]
    fn the_setup_timeline_is_not_mistaken_for_an_error() {
        let stderr = vmm(&[
            TIMELINE,
            "husk-vmm: guest shut down (vCPU 0: triple fault (reboot) at rip 0x1000)",
        ]);
        let why = diagnose(&tail(&[]), &stderr, &waited(true, false));
        assert!(why.starts_with(EARLY_BOOT), "{why}");
        assert!(why.contains("triple fault (reboot)"), "{why}");
        // A reset after the guest's drivers came up is not an early-boot loss.
        let later = vmm(&[
            TIMELINE,
            VSOCK_READY,
            "husk-vmm: guest shut down (i8042 reset)",
        ]);
        let why = diagnose(&tail(&[]), &later, &waited(true, false));
        assert!(why.starts_with("the guest reset itself"), "{why}");
    }

    #[test]
    fn setup_errors_name_what_failed() {
        let cases = [
            (
                "husk-vmm: error: loading the kernel /k: No such file",
                "could not load the guest kernel",
            ),
            (
                "husk-vmm: error: opening /dev/kvm: Permission denied",
                "could not use /dev/kvm",
            ),
            ("husk-vmm: error: something new", "husk-vmm failed"),
        ];
        for (line, expect) in cases {
            let why = diagnose(&tail(&[]), &vmm(&[line]), &waited(false, false));
            assert!(why.contains(expect) && why.contains(line), "{line}: {why}");
        }
    }

    #[test]
    fn console_and_poll_state_explain_the_rest() {
        let quiet = vmm(&[TIMELINE]);
        let panic = tail(&["Kernel panic - not syncing: No working init found."]);
        let why = diagnose(&panic, &quiet, &waited(true, false));
        assert!(why.contains("no usable /init"), "{why}");
        let why = diagnose(&tail(&[]), &quiet, &waited(false, false));
        assert!(why.contains("never created its vsock socket"), "{why}");
        let why = diagnose(&tail(&[]), &quiet, &waited(true, true));
        assert!(why.contains("did not answer Check"), "{why}");
        let vsock_up = vmm(&[TIMELINE, VSOCK_READY]);
        let why = diagnose(&tail(&[]), &vsock_up, &waited(true, false));
        assert!(why.contains("console is empty"), "{why}");
        let why = diagnose(&tail(&["booting"]), &vsock_up, &waited(true, false));
        assert!(why.contains("the guest booted"), "{why}");
    }
}
