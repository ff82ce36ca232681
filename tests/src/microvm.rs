//! Booting a guest and watching its serial console for a marker line.
//!
//! [`qemu_microvm`] builds the command for QEMU's `microvm` machine, the reference VMM husk is
//! compared against; [`watch_boot`] runs any VMM command whose serial console is its stdout and
//! times the marker.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::{kill_and_reap, kill_with_parent, shell_code};

/// The marker line husk-test-init prints once it runs.
pub const TEST_INIT_MARKER: &str = "HUSK-TEST-INIT ready";

/// A guest to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// ELF vmlinux (with a PVH note, which QEMU needs for ELF kernels).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Extra kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u32,
}

/// QEMU `-M microvm` with KVM, serial console on stdout, and the guest's reboot ending QEMU.
///
/// The guest gets `reboot=t` (triple fault): microvm has no i8042, so `reboot=k` would spin.
pub fn qemu_microvm(spec: &GuestSpec) -> Command {
    qemu_microvm_machine(spec, "microvm,x-option-roms=off,rtc=off")
}

/// QEMU `-M microvm` with a `vhost-vsock-device` for guest `cid` (the host reaches it with
/// AF_VSOCK, see [`vsock_connect`]). ACPI is off: only then does microvm announce its
/// virtio-mmio devices on the kernel command line, which is how the ACPI-less husk kernel
/// finds them (with ACPI they are only in the DSDT).
pub fn qemu_microvm_vsock(spec: &GuestSpec, cid: u32) -> Command {
    let mut cmd = qemu_microvm_machine(spec, "microvm,x-option-roms=off,rtc=off,acpi=off");
    cmd.args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")]);
    cmd
}

/// QEMU `-M microvm` with a `virtio-net-device` on tap `tap` (userspace virtio-net:
/// `vhost=off`), MAC `mac`. ACPI is off so the device is announced on the kernel command line.
/// The tap is looked up in QEMU's own network namespace: run it with [`NetnsTap::exec`].
pub fn qemu_microvm_net(spec: &GuestSpec, tap: &str, mac: &str) -> Command {
    let mut cmd = qemu_microvm_machine(spec, "microvm,x-option-roms=off,rtc=off,acpi=off");
    cmd.args([
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
        "-device",
        &format!("virtio-net-device,netdev=n0,mac={mac}"),
    ]);
    cmd
}

fn qemu_microvm_machine(spec: &GuestSpec, machine: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", machine, "-enable-kvm", "-cpu", "host"])
        .args([
            "-smp",
            &spec.vcpus.to_string(),
            "-m",
            &spec.memory_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initramfs)
        .arg("-append")
        .arg(format!("console=ttyS0 reboot=t panic=-1 {}", spec.cmdline).trim_end());
    cmd
}

/// `husk-vmm` for the same guest: writes its VM configuration into `dir` and returns the
/// command. The serial console goes to the VMM's stdout, like QEMU's `-serial stdio`.
pub fn husk_vmm(
    vmm: &Path,
    spec: &GuestSpec,
    dir: &Path,
    control_socket: Option<&Path>,
) -> std::io::Result<Command> {
    let opts = VmmOptions {
        control_socket,
        vsock: None,
        balloon: false,
        ..Default::default()
    };
    husk_vmm_with(vmm, spec, dir, &opts)
}

/// A hybrid-vsock device for [`husk_vmm_with`].
#[derive(Debug, Clone, Copy)]
pub struct VsockOptions<'a> {
    /// The guest's CID.
    pub guest_cid: u32,
    /// The host socket.
    pub socket: &'a Path,
    /// Guest ports allowed to reach `<socket>_<port>`.
    pub allowed_guest_ports: &'a [u32],
}

/// What else a `husk-vmm` VM gets.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmmOptions<'a> {
    /// The control socket.
    pub control_socket: Option<&'a Path>,
    /// A vsock device.
    pub vsock: Option<VsockOptions<'a>>,
    /// A virtio-balloon with free page reporting.
    pub balloon: bool,
    /// Where the control socket's `snapshot` writes.
    pub snapshot_dir: Option<&'a Path>,
    /// A snapshot to restore instead of booting.
    pub restore: Option<&'a Path>,
    /// Start with the vCPUs paused.
    pub start_paused: bool,
}

/// [`husk_vmm`] with a control socket and/or a vsock device.
pub fn husk_vmm_with(
    vmm: &Path,
    spec: &GuestSpec,
    dir: &Path,
    opts: &VmmOptions,
) -> std::io::Result<Command> {
    let vsock = opts.vsock.map(|v| {
        serde_json::json!({
            "guest_cid": v.guest_cid,
            "socket": v.socket,
            "allowed_guest_ports": v.allowed_guest_ports,
        })
    });
    let config = serde_json::json!({
        "kernel": spec.kernel,
        "initramfs": spec.initramfs,
        "extra_cmdline": spec.cmdline,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "serial_log": "/proc/self/fd/1",
        "control_socket": opts.control_socket,
        "vsock": vsock,
        "vcpu_affinity": crate::e2e::vcpu_affinity(spec.vcpus),
        "balloon": opts.balloon,
        "snapshot_dir": opts.snapshot_dir,
        "restore": opts.restore,
        "start_paused": opts.start_paused,
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    let mut cmd = Command::new(vmm);
    cmd.arg("--config").arg(path);
    Ok(cmd)
}

/// A virtio-fs share for [`husk_vmm_with_fs`].
#[derive(Debug, Clone, Copy)]
pub struct FsShareOptions<'a> {
    /// The tag the guest mounts (`mount -t virtiofs <tag> <dir>`).
    pub tag: &'a str,
    /// The host directory.
    pub path: &'a Path,
    /// `never`, `auto` or `always`.
    pub cache: &'a str,
}

/// [`husk_vmm_with`] plus virtio-fs shares (the VM configuration's `fs` list).
pub fn husk_vmm_with_fs(
    vmm: &Path,
    spec: &GuestSpec,
    dir: &Path,
    opts: &VmmOptions,
    shares: &[FsShareOptions],
) -> std::io::Result<Command> {
    let cmd = husk_vmm_with(vmm, spec, dir, opts)?;
    let path = dir.join("vm.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["fs"] = shares
        .iter()
        .map(|s| serde_json::json!({"tag": s.tag, "path": s.path, "cache": s.cache}))
        .collect();
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(cmd)
}

/// A virtio-net device for [`husk_vmm_with_net`].
#[derive(Debug, Clone, Copy)]
pub struct NetOptions<'a> {
    /// The tap device (it must exist).
    pub tap: &'a str,
    /// The guest NIC's MAC address.
    pub mac: &'a str,
    /// The MTU the device advertises.
    pub mtu: Option<u16>,
    /// The network namespace the tap lives in (`/run/netns/<name>`).
    pub netns: Option<&'a Path>,
}

/// [`husk_vmm_with`] plus virtio-net devices (the VM configuration's `net` list).
pub fn husk_vmm_with_net(
    vmm: &Path,
    spec: &GuestSpec,
    dir: &Path,
    opts: &VmmOptions,
    nets: &[NetOptions],
) -> std::io::Result<Command> {
    let cmd = husk_vmm_with(vmm, spec, dir, opts)?;
    let path = dir.join("vm.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    config["net"] = nets
        .iter()
        .map(|n| serde_json::json!({"tap": n.tap, "mac": n.mac, "mtu": n.mtu, "netns": n.netns}))
        .collect();
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    Ok(cmd)
}

/// A network namespace with a persistent tap in it, made with iproute2 and deleted (with the
/// tap) when dropped, also when a test fails.
#[derive(Debug)]
pub struct NetnsTap {
    /// The namespace's name (`ip netns` name).
    pub netns: String,
    /// The tap's name.
    pub tap: String,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl NetnsTap {
    /// Creates namespace `netns` (replacing a stale one of that name) with tap `tap`, up, with
    /// the host-side address `host_cidr` and `mtu`, and `lo` up.
    pub fn create(netns: &str, tap: &str, host_cidr: &str, mtu: u16) -> std::io::Result<Self> {
        let _ = ip(&["netns", "del", netns]);
        ip(&["netns", "add", netns])?;
        let fixture = NetnsTap {
            netns: netns.into(),
            tap: tap.into(),
        };
        let mtu = mtu.to_string();
        ip(&["-n", netns, "tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(&["-n", netns, "link", "set", tap, "mtu", &mtu])?;
        ip(&["-n", netns, "addr", "add", host_cidr, "dev", tap])?;
        ip(&["-n", netns, "link", "set", tap, "up"])?;
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        Ok(fixture)
    }

    /// The namespace's path, for the VM configuration and [`in_netns`].
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// `cmd` run inside the namespace (`ip netns exec`, which execs it: same pid).
    pub fn exec(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.netns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    }

    /// `ip -n <netns> <args>`'s standard output.
    pub fn ip_output(&self, args: &[&str]) -> std::io::Result<String> {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.netns)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for NetnsTap {
    fn drop(&mut self) {
        // Deleting the namespace deletes the tap in it (once no process holds the tap).
        let _ = ip(&["-n", &self.netns, "link", "del", &self.tap]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// Runs `f` on a thread that joined the network namespace at `netns` (sockets it creates stay
/// in that namespace, whichever thread uses them later).
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it changes only this thread's namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// Sends one request line (`"ping\n"`, `"queues\n"`, ...) to husk-vmm's control socket and
/// returns its answer line without the newline.
pub fn control(socket: &Path, request: &str) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Opens a hybrid-vsock connection to guest port `port` through the VM's socket, with the
/// shim's client (`husk_protocol::client`); `timeout` bounds the handshake.
pub use husk_protocol::client::hybrid_connect_blocking as hybrid_connect;

/// Connects to `port` of the guest with context id `cid` over AF_VSOCK (a vhost-vsock guest,
/// such as QEMU's anchor). The socket is returned as a `UnixStream`, which only reads, writes
/// and sets timeouts on its descriptor, all of which work the same on a vsock socket.
pub fn vsock_connect(cid: u32, port: u32) -> std::io::Result<UnixStream> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes; the descriptor is live.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// A VMM process whose console is read line by line, for tests that act while the guest runs.
#[derive(Debug)]
pub struct RunningVm {
    child: std::process::Child,
    started: Instant,
    lines: mpsc::Receiver<(String, Instant)>,
    /// Everything read so far.
    pub console: String,
}

impl RunningVm {
    /// Spawns `cmd` with its stdout and stderr captured.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kill_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let (tx, lines) = mpsc::channel();
        let streams: Vec<Box<dyn std::io::Read + Send>> = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for stream in streams {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send((line, Instant::now())).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(RunningVm {
            child,
            started,
            lines,
            console: String::new(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why an awaited line never came, for a VM with virtio devices: the shim's rule
    /// (shim/src/vm/diagnose.rs) applied to what husk-vmm printed, so `make e2e` tells the nested
    /// test host's early-boot loss from a failure of husk's: a guest whose kernel set up none of
    /// its devices (no `DRIVER_READY` line) died or hung in early kernel setup
    /// ([`husk_protocol::vmm::EARLY_BOOT`]). Then the console so far.
    pub fn missing(&self, what: &str) -> String {
        missing(what, &self.console, true)
    }

    /// Reads console lines until one contains `needle`; returns it, or `None` at the deadline or
    /// when the output ends.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_timed(needle, timeout).map(|(line, _)| line)
    }

    /// Like [`RunningVm::wait_for`], with the time from spawning until the line was read.
    pub fn wait_for_timed(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Option<(String, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let (line, at) = self.lines.recv_timeout(wait).ok()?;
            self.console.push_str(&line);
            self.console.push('\n');
            if line.contains(needle) {
                return Some((line, at - self.started));
            }
        }
    }

    /// Sends `signal` to the VMM.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which has not been reaped (we own the Child).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits for the VMM to exit (shell-style code), killing it at the deadline (`None`).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let status = crate::process::wait_until(&mut self.child, Instant::now() + timeout)
            .ok()
            .flatten();
        if status.is_none() {
            let _ = kill_and_reap(&mut self.child, false);
        }
        while let Ok((line, _)) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.console.push_str(&line);
            self.console.push('\n');
        }
        status.map(shell_code)
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill_and_reap(&mut self.child, false);
        }
    }
}

/// What a watched boot produced.
#[derive(Debug, Clone)]
pub struct BootResult {
    /// Time from spawning the VMM until the marker line was read, if it was.
    pub to_marker: Option<Duration>,
    /// The marker line itself.
    pub marker_line: Option<String>,
    /// The VMM's exit code (128 + N for signal N); `None` when it was killed at the deadline.
    pub exit_code: Option<i32>,
    /// Everything the console printed.
    pub console: String,
}

pub use crate::guest_loss::missing;

/// Spawns `cmd` (its stdout is the guest console), records when `marker` appears, and waits for
/// the VMM to exit; kills it at `timeout`.
pub fn watch_boot(cmd: Command, marker: &str, timeout: Duration) -> std::io::Result<BootResult> {
    let deadline = Instant::now() + timeout;
    let mut vm = RunningVm::spawn(cmd)?;
    let found = vm.wait_for_timed(marker, timeout);
    let exit_code = vm.wait(deadline.saturating_duration_since(Instant::now()));
    Ok(BootResult {
        to_marker: found.as_ref().map(|(_, at)| *at),
        marker_line: found.map(|(line, _)| line.trim().to_string()),
        exit_code,
        console: std::mem::take(&mut vm.console),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_time_and_exit_code_are_reported() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo booting; echo 'x HUSK-TEST-INIT ready kernel=k' ; echo bye >&2; exit 3",
        ]);
        let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_secs(10)).unwrap();
        assert!(r.to_marker.is_some());
        assert_eq!(
            r.marker_line.as_deref(),
            Some("x HUSK-TEST-INIT ready kernel=k")
        );
        assert_eq!(r.exit_code, Some(3));
        assert!(r.console.contains("bye"));
    }

    #[test]
    fn a_hung_vmm_is_killed_at_the_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = Instant::now();
        let r = watch_boot(cmd, TEST_INIT_MARKER, Duration::from_millis(300)).unwrap();
        assert!(r.to_marker.is_none() && r.exit_code.is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn qemu_command_carries_the_guest() {
        let spec = GuestSpec {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: "quiet".into(),
            vcpus: 2,
            memory_mib: 128,
        };
        let args: Vec<String> = qemu_microvm(&spec)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-smp 2 -m 128"), "{joined}");
        assert!(joined.contains("-kernel /k -initrd /i"), "{joined}");
        assert!(
            args.last().unwrap().ends_with("reboot=t panic=-1 quiet"),
            "{joined}"
        );
    }
}
