//! A private containerd for end-to-end tests: the host's containerd (Debian's 1.6) or the release
//! `HUSK_CONTAINERD_BIN` names ([`Release`], in `binaries`), with its own root, state,
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
//!
//! Split by purpose: which containerd and its config file (`binaries`, `config`),
//! [`HuskArtifacts`] and [`HuskSettings`] (what husk needs and the config the
//! harness writes for it) in `husk`, [`run_bounded`] and [`CtrOutput`] (any command, bounded in
//! time) in `bounded`, and the look at the host for what a test left behind
//! ([`Containerd::leftovers`], [`processes_with`], [`mounts_below`], [`shim_socket`]) in
//! `leftovers`; this module starts, drives and tears down containerd itself.

mod binaries;
mod bounded;
pub mod config;
pub mod cri_config;
mod husk;
mod leftovers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use binaries::Release;
pub use bounded::{run_bounded, CtrOutput};
pub use husk::{template_dir, writable_dir, HuskArtifacts, HuskSettings};
pub use leftovers::{loop_devices_below, mounts_below, processes_with, shim_socket};

use crate::oci_image;
use crate::process::{kill_and_reap, kill_with_parent, own_process_group, wait_until};

/// The runtime names the tests use.
pub const RUNC: &str = "io.containerd.runc.v2";
/// husk's runtime.
pub const HUSK: &str = "io.containerd.husk.v2";
/// The namespace ctr uses.
pub const NAMESPACE: &str = "default";

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
    /// The containerd release this is (`HUSK_CONTAINERD_BIN`).
    release: &'static Release,
}

impl Containerd {
    /// Starts containerd; with `husk`, installs the shim and writes its config.
    pub fn start(husk: Option<&HuskSettings>) -> anyhow::Result<Containerd> {
        Containerd::start_with(husk, false)
    }

    /// Starts containerd with the CRI plugin on (src/containerd/cri_config.rs: runtimes `runc` and `husk`,
    /// the pause image, a private CNI bridge); ctr and the leftover checks use namespace
    /// `k8s.io`. Import the images with [`crate::cri::import_images`].
    pub fn start_cri(husk: Option<&HuskSettings>) -> anyhow::Result<Containerd> {
        Containerd::start_with(husk, true)
    }

    fn start_with(husk: Option<&HuskSettings>, cri: bool) -> anyhow::Result<Containerd> {
        let release = Release::current()?;
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
            Some(crate::containerd::cri_config::prepare(
                &base,
                &husk_config,
                release,
            )?)
        } else {
            None
        };
        std::fs::write(
            base.join("config.toml"),
            config::containerd_config(&base, cri_section.as_deref(), release),
        )?;
        let mut c = Containerd {
            base,
            child: None,
            namespace: if cri {
                cri_config::NAMESPACE
            } else {
                NAMESPACE
            },
            cri,
            husk_state,
            husk_config,
            release,
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

    /// Starts containerd with CRI on a config file the caller wrote at `<base>/config.toml`: a
    /// node's config as a user has it (a release's stock config that `husk install` edited).
    /// That config must put containerd's gRPC socket at `<base>/containerd.sock`; `husk_state`
    /// and `husk_config` are the ones its husk handler uses. `base` (under `/run`, named
    /// `hct-*` like the harness's own) is torn down on drop like theirs.
    pub fn start_with_config_file(
        base: PathBuf,
        husk_state: PathBuf,
        husk_config: PathBuf,
    ) -> anyhow::Result<Containerd> {
        std::fs::create_dir_all(base.join("log"))?;
        std::fs::create_dir_all(base.join("img"))?;
        let mut c = Containerd {
            base,
            child: None,
            namespace: cri_config::NAMESPACE,
            cri: true,
            husk_state,
            husk_config,
            release: Release::current()?,
        };
        c.launch()?;
        Ok(c)
    }

    /// Rewrites the husk config (new shims read it at their first Create).
    pub fn write_husk_config(&self, h: &HuskSettings) -> anyhow::Result<()> {
        std::fs::write(&self.husk_config, h.toml(&self.husk_state))?;
        Ok(())
    }

    /// Makes the VM template of a pod with `nics` NICs at the husk config's size, ahead of
    /// time: `<shim> template build --nics <nics> --config <husk_config>` (the shim's own
    /// command, as `husk template build` runs it). Returns what it printed.
    pub fn build_template(&self, shim: &Path, nics: u8) -> anyhow::Result<String> {
        let out = Command::new(shim)
            .args(["template", "build", "--nics", &nics.to_string(), "--config"])
            .arg(&self.husk_config)
            .output()
            .with_context(|| format!("running {}", shim.display()))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "template build: {said}");
        Ok(said.trim().to_string())
    }

    /// containerd's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The directory everything lives in.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The namespace ctr commands and leftover checks use.
    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    /// The containerd release running.
    pub fn release(&self) -> &'static Release {
        self.release
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
        let mut cmd = Command::new(self.release.containerd());
        cmd.arg("--config")
            .arg(self.base.join("config.toml"))
            .env("PATH", self.release.path_env())
            .env("HUSK_CONFIG", &self.husk_config)
            .env("HUSK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        own_process_group(&mut cmd);
        kill_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (apt-get install containerd, or set HUSK_CONTAINERD_BIN)",
                self.release.containerd().display()
            )
        })?;
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
        self.restart_after(libc::SIGTERM)
    }

    /// Like [`Containerd::restart`], stopping containerd with `signal` (SIGKILL: a crash).
    pub fn restart_after(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on containerd's pid, which we spawned and have not reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, signal) };
            if wait_until(&mut c, Instant::now() + Duration::from_secs(30))?.is_none() {
                kill_and_reap(&mut c, false);
            }
        }
        self.launch()
    }

    /// A ctr command against this containerd.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.release.ctr());
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
            "'{}' --address '{}' --namespace '{}'",
            self.release.ctr().display(),
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

    /// How long containerd's log is now, in bytes (for [`Containerd::log_since`]).
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.base.join("log/containerd.log")).map_or(0, |m| m.len())
    }

    /// What containerd's log (which includes the shims' logs) gained after `offset`
    /// ([`Containerd::log_len`]).
    pub fn log_since(&self, offset: u64) -> String {
        let text = std::fs::read(self.base.join("log/containerd.log")).unwrap_or_default();
        let from = usize::try_from(offset).map_or(text.len(), |o| o.min(text.len()));
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// For a failure's first line: ", on a guest lost to a triple fault" when a shim logged
    /// that its VM ended on one, ", on a lost guest (the guest stopped answering)" when a shim's guest
    /// failed a health check (the rule in scripts/e2e-failure.py pairs either with the test
    /// host's record of the known fetch fault), else nothing.
    pub fn guest_loss(&self) -> &'static str {
        let log = self.log_since(0);
        if crate::guest_loss::vm_ended_on_triple_fault(&log) {
            ", on a guest lost to a triple fault"
        } else if crate::guest_loss::guest_went_silent(&log) {
            crate::guest_loss::STOPPED_ANSWERING
        } else {
            ""
        }
    }

    /// Runs `steps`; if they panic, panics again with the first panic's message and, on its
    /// first line, [`Containerd::guest_loss`]: a step that failed because its pod's VM died of
    /// the nested test host's known fault (an assertion on what the dead VM's container did)
    /// then carries the signature scripts/e2e-failure.py looks for. The first panic is not
    /// printed on its own (the rule reads every panic's first line), only inside the second.
    pub fn naming_guest_loss<T>(&self, steps: impl FnOnce() -> T) -> T {
        crate::guest_loss::naming(|| self.guest_loss(), steps)
    }

    /// The last `n` lines of containerd's log (which includes the shims' logs).
    pub fn log_tail(&self, n: usize) -> String {
        let text =
            std::fs::read_to_string(self.base.join("log/containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
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
            crate::containerd::cri_config::teardown(&self.base);
        }
        if std::thread::panicking() {
            // A failed test's whole log (with the shims' and husk-vmm's lines), named after the
            // test, for scripts/e2e-failure.py to quote and for the CI's artifacts.
            let test = std::thread::current()
                .name()
                .unwrap_or("containerd")
                .replace("::", "-");
            if let Some(to) = self.save_log(&test) {
                eprintln!("containerd log (with the shims'): {}", to.display());
            }
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
