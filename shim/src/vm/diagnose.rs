//! Why a VM's agent never answered, in words a user can act on: read from husk-vmm's stderr
//! (its setup errors and how the guest ended), the guest console and how the readiness poll
//! went.

use super::spawn::Tail;
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
    if let Some(line) = stderr.find("guest shut down") {
        return format!(
            "the guest reset itself before its agent answered, with no kernel panic on the \
             console: a triple fault in early boot ends a VM this way ({line})"
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

    fn tail(lines: &[&str]) -> Tail {
        let mut t = Tail::default();
        for l in lines {
            t.push((*l).to_string());
        }
        t
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

    #[test]
    fn the_setup_timeline_is_not_mistaken_for_an_error() {
        let stderr = tail(&[
            TIMELINE,
            "husk-vmm: guest shut down (vCPU 0: triple fault (reboot) at rip 0x1000)",
        ]);
        let why = diagnose(&tail(&[]), &stderr, &waited(true, false));
        assert!(why.starts_with("the guest reset itself"), "{why}");
        assert!(why.contains("triple fault (reboot)"), "{why}");
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
            let why = diagnose(&tail(&[]), &tail(&[line]), &waited(false, false));
            assert!(why.contains(expect) && why.contains(line), "{line}: {why}");
        }
    }

    #[test]
    fn console_and_poll_state_explain_the_rest() {
        let quiet = tail(&[TIMELINE]);
        let panic = tail(&["Kernel panic - not syncing: No working init found."]);
        let why = diagnose(&panic, &quiet, &waited(true, false));
        assert!(why.contains("no usable /init"), "{why}");
        let why = diagnose(&tail(&[]), &quiet, &waited(false, false));
        assert!(why.contains("never created its vsock socket"), "{why}");
        let why = diagnose(&tail(&[]), &quiet, &waited(true, true));
        assert!(why.contains("did not answer Check"), "{why}");
        let why = diagnose(&tail(&[]), &quiet, &waited(true, false));
        assert!(why.contains("console is empty"), "{why}");
        let why = diagnose(&tail(&["booting"]), &quiet, &waited(true, false));
        assert!(why.contains("the guest booted"), "{why}");
    }
}
