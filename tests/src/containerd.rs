//! A private containerd for end-to-end tests: Debian's containerd 1.6 with its own root, state,
//! sockets and opt directory under `/run/hct-XXXXXX` (tmpfs, where the overlayfs snapshotter
//! works, also inside the test host), the CRI plugin disabled, the overlayfs snapshotter, the
//! busybox image built by [`crate::oci_image`] imported, and `containerd-shim-husk-v2` in the
//! opt directory's `bin/` (first in the PATH containerd gives shims), so that
//! `--runtime io.containerd.husk.v2` resolves. The husk config it points the shim at
//! (`HUSK_CONFIG` in containerd's environment, inherited by shims) keeps husk's per-sandbox state
//! under the same directory.
//!
//! Everything is torn down on drop: tasks, containers, containerd, leftover shims and
//! husk-vmm processes of this instance, mounts, the directory. [`Containerd::leftovers`] lists
//! what a test left behind (processes, mounts, sockets, state).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::oci_image;
use crate::process::{kill_and_reap, kill_with_parent, own_process_group, shell_code, wait_until};

/// The runtime names the tests use.
pub const RUNC: &str = "io.containerd.runc.v2";
/// husk's runtime.
pub const HUSK: &str = "io.containerd.husk.v2";
/// The namespace ctr uses.
pub const NAMESPACE: &str = "default";

/// husk's binaries and guest artifacts.
#[derive(Debug, Clone)]
pub struct HuskArtifacts {
    /// `containerd-shim-husk-v2`.
    pub shim: PathBuf,
    /// `husk-vmm`.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs with husk-agent.
    pub initramfs: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl HuskArtifacts {
    /// From the environment `make e2e` sets (scripts/guest-env.sh): `HUSK_SHIM` (default: next
    /// to `HUSK_VMM`), `HUSK_VMM`, `HUSK_KERNEL`, `HUSK_AGENT_IMAGE` or `HUSK_INITRD` (default:
    /// `husk-initrd.img` next to `HUSK_TEST_IMAGE`). The error names every missing piece.
    pub fn from_env() -> Result<HuskArtifacts, String> {
        let vmm = env_path("HUSK_VMM");
        let shim = env_path("HUSK_SHIM").or_else(|| {
            vmm.as_ref()
                .and_then(|v| v.parent().map(|d| d.join("containerd-shim-husk-v2")))
        });
        let initramfs = env_path("HUSK_AGENT_IMAGE")
            .or_else(|| env_path("HUSK_INITRD"))
            .or_else(|| {
                env_path("HUSK_TEST_IMAGE")
                    .and_then(|t| t.parent().map(|d| d.join("husk-initrd.img")))
            });
        let kernel = env_path("HUSK_KERNEL");
        let mut missing = Vec::new();
        for (name, p, made_by) in [
            ("HUSK_SHIM", &shim, "make build (containerd-shim-husk-v2)"),
            ("HUSK_VMM", &vmm, "make build (husk-vmm)"),
            ("HUSK_KERNEL", &kernel, "make kernel"),
            (
                "HUSK_AGENT_IMAGE",
                &initramfs,
                "make image (husk-initrd.img with husk-agent)",
            ),
        ] {
            match p {
                Some(p) if p.is_file() => {}
                Some(p) => {
                    missing.push(format!("{name}={} does not exist ({made_by})", p.display()))
                }
                None => missing.push(format!("{name} is not set ({made_by})")),
            }
        }
        if !missing.is_empty() {
            return Err(format!("husk artifacts missing: {}", missing.join("; ")));
        }
        Ok(HuskArtifacts {
            shim: shim.unwrap_or_default(),
            vmm: vmm.unwrap_or_default(),
            kernel: kernel.unwrap_or_default(),
            initramfs: initramfs.unwrap_or_default(),
        })
    }
}

/// The husk config the harness writes (fields a test may change).
#[derive(Debug, Clone)]
pub struct HuskSettings {
    /// The artifacts.
    pub artifacts: HuskArtifacts,
    /// Boot timeout (nested boots take 5 to 30 s; the default is generous).
    pub boot_timeout_secs: u64,
    /// Extra kernel command line.
    pub extra_cmdline: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM.
    pub memory_mib: u32,
}

impl HuskSettings {
    /// Test defaults: 120 s boot timeout, `quiet`, 1 vCPU, 256 MiB.
    pub fn new(artifacts: HuskArtifacts) -> HuskSettings {
        HuskSettings {
            artifacts,
            boot_timeout_secs: 120,
            extra_cmdline: "quiet".into(),
            vcpus: 1,
            memory_mib: 256,
        }
    }

    fn toml(&self, state_dir: &Path) -> String {
        let a = &self.artifacts;
        format!(
            "# written by husk-tests (src/containerd.rs)\nvmm = {:?}\nkernel = {:?}\ninitramfs = {:?}\n\
             state_dir = {:?}\nboot_timeout_secs = {}\nextra_cmdline = {:?}\nvcpus = {}\n\
             memory_mib = {}\nshutdown_timeout_secs = 20\n",
            a.vmm.display().to_string(),
            a.kernel.display().to_string(),
            a.initramfs.display().to_string(),
            state_dir.display().to_string(),
            self.boot_timeout_secs,
            self.extra_cmdline,
            self.vcpus,
            self.memory_mib,
        )
    }
}

/// The result of one ctr command.
#[derive(Debug, Clone)]
pub struct CtrOutput {
    /// Exit code (128 + N for signal N; 124 on timeout).
    pub code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl std::fmt::Display for CtrOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}; stdout {:?}; stderr {:?}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    base: PathBuf,
    child: Option<Child>,
    /// The namespace ctr works in and [`Containerd::leftovers`] looks at (`k8s.io` with CRI).
    namespace: &'static str,
    /// Whether the CRI plugin is on ([`Containerd::start_cri`]).
    cri: bool,
    /// husk's per-sandbox state directory (`state_dir` in the husk config).
    pub husk_state: PathBuf,
    /// The husk config file containerd's shims read.
    pub husk_config: PathBuf,
}

/// Runs `cmd` with `stdin`, bounded by `timeout` (its process group is killed then).
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> CtrOutput {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    own_process_group(&mut cmd);
    kill_with_parent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return CtrOutput {
                code: 127,
                stdout: String::new(),
                stderr: format!("spawning {cmd:?}: {e}"),
            }
        }
    };
    let input = stdin.map(<[u8]>::to_vec);
    let mut pipe_in = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let (Some(p), Some(data)) = (pipe_in.as_mut(), input) {
            let _ = p.write_all(&data);
        }
        drop(pipe_in);
    });
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = wait_until(&mut child, Instant::now() + timeout)
        .ok()
        .flatten();
    let code = match status {
        Some(s) => shell_code(s),
        None => {
            kill_and_reap(&mut child, true);
            124
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if code == 124 && status.is_none() {
        stderr.push_str(&format!("\n[husk-tests: killed after {timeout:?}]"));
    }
    CtrOutput {
        code,
        stdout,
        stderr,
    }
}

/// containerd's config; `cri` is the CRI plugin's section (the plugin is disabled without it).
fn containerd_config(base: &Path, cri: Option<&str>) -> String {
    let b = base.display();
    let no_cri = if cri.is_some() {
        ""
    } else {
        "\"io.containerd.grpc.v1.cri\", "
    };
    let cri = cri.unwrap_or_default();
    format!(
        r#"version = 2
root = "{b}/root"
state = "{b}/state"
disabled_plugins = [{no_cri}"io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{b}/containerd.sock"

[ttrpc]
  address = "{b}/containerd.sock.ttrpc"

[debug]
  address = "{b}/debug.sock"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
{cri}"#
    )
}

/// The socket path containerd 1.6 computes for a shim (`runtime/v2/shim/util_unix.go`).
pub fn shim_socket(containerd_sock: &Path, namespace: &str, id: &str) -> PathBuf {
    let joined = containerd_sock.join(namespace).join(id);
    let hash = Sha256::digest(joined.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/run/containerd/s/{hash:x}"))
}

fn cmdline(pid: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// (pid, command line) of every process whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            if let Some(c) = cmdline(&name) {
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .is_some_and(|r| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(true);
                if c.contains(needle) && !zombie {
                    out.push((pid, c));
                }
            }
        }
    }
    out
}

/// Mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(String::from)
        .collect()
}

impl Containerd {
    /// Starts containerd; with `husk`, installs the shim and writes its config.
    pub fn start(husk: Option<&HuskSettings>) -> anyhow::Result<Containerd> {
        Containerd::start_with(husk, false)
    }

    /// Starts containerd with the CRI plugin on (src/cri/config.rs: runtimes `runc` and `husk`,
    /// the pause image, a private CNI bridge); ctr and the leftover checks use namespace
    /// `k8s.io`. Import the images with [`crate::cri::import_images`].
    pub fn start_cri(husk: Option<&HuskSettings>) -> anyhow::Result<Containerd> {
        Containerd::start_with(husk, true)
    }

    fn start_with(husk: Option<&HuskSettings>, cri: bool) -> anyhow::Result<Containerd> {
        let base = tempfile::Builder::new()
            .prefix("hct-")
            .tempdir_in("/run")
            .context("creating the containerd directory under /run")?
            .keep();
        let husk_state = base.join("hs");
        let husk_config = base.join("husk.toml");
        for d in ["opt/bin", "log", "img"] {
            std::fs::create_dir_all(base.join(d))?;
        }
        let cri_section = if cri {
            Some(crate::cri::config::prepare(&base, &husk_config)?)
        } else {
            None
        };
        std::fs::write(
            base.join("config.toml"),
            containerd_config(&base, cri_section.as_deref()),
        )?;
        let mut c = Containerd {
            base,
            child: None,
            namespace: if cri {
                crate::cri::NAMESPACE
            } else {
                NAMESPACE
            },
            cri,
            husk_state,
            husk_config,
        };
        if let Some(h) = husk {
            std::os::unix::fs::symlink(
                &h.artifacts.shim,
                c.base.join("opt/bin/containerd-shim-husk-v2"),
            )
            .context("installing the shim in the opt directory")?;
            c.write_husk_config(h)?;
        }
        c.launch()?;
        Ok(c)
    }

    /// Rewrites the husk config (new shims read it at their first Create).
    pub fn write_husk_config(&self, h: &HuskSettings) -> anyhow::Result<()> {
        std::fs::write(&self.husk_config, h.toml(&self.husk_state))?;
        Ok(())
    }

    /// The directory everything lives in.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The namespace ctr commands and leftover checks use.
    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.base.join("containerd.sock")
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("log/containerd.log"))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.base.join("config.toml"))
            .env("HUSK_CONFIG", &self.husk_config)
            .env("HUSK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        own_process_group(&mut cmd);
        kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.ctr(&["version"], None, Duration::from_secs(20));
            if v.code == 0 {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    bail!("containerd exited ({s}); log:\n{}", self.log_tail(40));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 60 s ({v}); log:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops containerd (SIGTERM) and starts it again with the same configuration; running
    /// shims and their tasks stay.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on containerd's pid, which we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            if wait_until(&mut c, Instant::now() + Duration::from_secs(30))?.is_none() {
                kill_and_reap(&mut c, false);
            }
        }
        self.launch()
    }

    /// A ctr command against this containerd.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(self.namespace)
            .args(args);
        cmd
    }

    /// Runs ctr with `args`, bounded by `timeout`.
    pub fn ctr(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> CtrOutput {
        run_bounded(self.ctr_command(args), stdin, timeout)
    }

    /// The ctr command line as one shell string (for `script`).
    pub fn ctr_shell(&self, args: &[&str]) -> String {
        let mut s = format!(
            "ctr --address '{}' --namespace '{}'",
            self.socket().display(),
            self.namespace
        );
        for a in args {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        }
        s
    }

    /// Builds the busybox image and imports it.
    pub fn import_busybox(&self) -> anyhow::Result<oci_image::ImageInfo> {
        let info = oci_image::busybox_image(&self.base.join("img/busybox.tar"))?;
        let p = info.path.display().to_string();
        let out = self.ctr(&["image", "import", &p], None, Duration::from_secs(120));
        if out.code != 0 {
            bail!("ctr image import failed: {out}");
        }
        Ok(info)
    }

    /// The last `n` lines of containerd's log (which includes the shims' logs).
    /// Copies the whole containerd log (which carries the shims' logs) to
    /// `$HUSK_E2E_ARTIFACTS/<name>.containerd.log`, where `make e2e` keeps it after the test host
    /// is gone; returns the path, or `None` when the variable is unset or the copy failed.
    pub fn save_log(&self, name: &str) -> Option<PathBuf> {
        let dir = PathBuf::from(std::env::var_os("HUSK_E2E_ARTIFACTS")?);
        std::fs::create_dir_all(&dir).ok()?;
        let to = dir.join(format!("{name}.containerd.log"));
        std::fs::copy(self.base.join("log/containerd.log"), &to).ok()?;
        Some(to)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.base.join("log/containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// What a finished test left behind for container `ids`: shim and husk-vmm processes,
    /// mounts, shim sockets, husk state directories, containers and tasks.
    pub fn leftovers(&self, ids: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        let sock = self.socket();
        for id in ids {
            for (pid, c) in processes_with(&format!("-id {id} ")) {
                if c.contains(&sock.display().to_string()) {
                    found.push(format!("shim process {pid}: {c}"));
                }
            }
            for (pid, c) in processes_with(&format!("{}/{id}/vm.json", self.husk_state.display())) {
                found.push(format!("husk-vmm process {pid}: {c}"));
            }
            let s = shim_socket(&sock, self.namespace, id);
            if s.exists() {
                found.push(format!("shim socket {}", s.display()));
            }
            let st = self.husk_state.join(id);
            if st.exists() {
                found.push(format!("husk state {}", st.display()));
            }
        }
        let bundles = self
            .base
            .join("state/io.containerd.runtime.v2.task")
            .join(self.namespace);
        for id in ids {
            for dir in [self.husk_state.join(id), bundles.join(id)] {
                for m in mounts_below(&dir) {
                    found.push(format!("mount {m}"));
                }
            }
        }
        for what in [["task", "ls", "-q"], ["container", "ls", "-q"]] {
            let out = self.ctr(&what, None, Duration::from_secs(30));
            for line in out.stdout.lines().filter(|l| ids.contains(&l.trim())) {
                found.push(format!("{} {}", what[0], line.trim()));
            }
        }
        found
    }

    /// Waits (at most 30 s: shims exit and containerd's `delete` runs after the reply) until
    /// nothing of `ids` is left; panics listing what is.
    pub fn assert_clean(&self, ids: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = self.leftovers(ids);
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind for {ids:?}:\n{}\ncontainerd log:\n{}",
                    left.join("\n"),
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Kills and removes every task and container (best effort).
    pub fn remove_all(&self) {
        let t = Duration::from_secs(60);
        for id in self.ctr(&["task", "ls", "-q"], None, t).stdout.lines() {
            self.ctr(&["task", "kill", "-s", "SIGKILL", id.trim()], None, t);
        }
        for id in self.ctr(&["task", "ls", "-q"], None, t).stdout.lines() {
            self.ctr(&["task", "rm", "-f", id.trim()], None, t);
        }
        for id in self.ctr(&["container", "ls", "-q"], None, t).stdout.lines() {
            self.ctr(&["container", "rm", id.trim()], None, t);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_all();
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on containerd's pid, spawned by us and not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            if !matches!(
                wait_until(&mut c, Instant::now() + Duration::from_secs(20)),
                Ok(Some(_))
            ) {
                kill_and_reap(&mut c, true);
            }
        }
        if self.cri {
            crate::cri::config::teardown(&self.base);
        }
        let needle = self.base.display().to_string();
        for (pid, _) in processes_with(&needle) {
            // SAFETY: kill(2) on a process whose command line names this harness's private
            // directory (a shim or husk-vmm of this instance).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut mounts = mounts_below(&self.base);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_socket_matches_containerds_formula() {
        // The test vector of containerd-shim 0.12 (src/lib.rs): address, namespace, id.
        let s = shim_socket(
            Path::new("/run/containerd/containerd.sock"),
            "default",
            "123",
        );
        assert_eq!(
            s,
            Path::new(
                "/run/containerd/s/0ddfbd72d02b3551e75f3a0ed90b9965b533401be618f43a568bc522764e0ad0"
            )
        );
    }

    #[test]
    fn bounded_runs_report_codes_output_and_timeouts() {
        let mut c = Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = run_bounded(c, Some(b"in\n"), Duration::from_secs(10));
        assert_eq!(
            (out.code, out.stdout.as_str(), out.stderr.as_str()),
            (3, "in\n", "err\n")
        );
        let mut c = Command::new("sleep");
        c.arg("30");
        let out = run_bounded(c, None, Duration::from_millis(200));
        assert_eq!(out.code, 124);
    }

    #[test]
    fn the_husk_config_is_valid_toml_with_the_state_dir() {
        let a = HuskArtifacts {
            shim: "/b/containerd-shim-husk-v2".into(),
            vmm: "/b/husk-vmm".into(),
            kernel: "/k/vmlinux".into(),
            initramfs: "/i/husk-initrd.img".into(),
        };
        let t = HuskSettings::new(a).toml(Path::new("/run/hct-x/hs"));
        assert!(t.contains("state_dir = \"/run/hct-x/hs\""), "{t}");
        assert!(t.contains("boot_timeout_secs = 120"), "{t}");
        assert!(t.contains("kernel = \"/k/vmlinux\""), "{t}");
    }
}
