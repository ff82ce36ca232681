//! `husk check`: can this host run husk? One line per check, `ok|FAIL|warn <check>: <detail>`,
//! and a `fix:` line under every failure. The facts come from a [`Probe`] ([`system::System`]
//! on a real host, fakes in the tests), so every verdict below is tested without root or KVM.
//!
//! The artifacts are resolved exactly as the shim resolves them (`husk_protocol::config`): the
//! config named by `--config`, else `$HUSK_CONFIG`, else `/etc/husk/config.toml`, else the
//! defaults next to the shim binary found on PATH.

mod cgroups;
mod jail;
mod live;
pub mod system;

use std::fmt;
use std::path::{Path, PathBuf};

use husk_protocol::config::{ConfigError, HuskConfig, Loaded};

use crate::containerd::{self, ContainerdConfigError};
use crate::paths::SHIM;

/// containerd's default config file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// containerd's default gRPC socket.
pub const CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Where husk's guests can be run on a PVM host.
const NESTED_HINT: &str = "run husk on a machine with VT-x or AMD-V (bare metal, or a cloud VM \
     with nested virtualization enabled); on this machine husk's guests run only inside the \
     nested test host: `make testhost CMD='...'` (QEMU emulating AMD SVM, with kvm_amd)";

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// husk cannot run until this is fixed.
    Fail,
    /// Not checked, or worth knowing.
    Warn,
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The verdict.
    pub status: Status,
    /// The check's name.
    pub check: &'static str,
    /// What was found.
    pub detail: String,
    /// How to fix a failure.
    pub fix: Option<String>,
}

impl Line {
    fn ok(check: &'static str, detail: impl Into<String>) -> Line {
        Line {
            status: Status::Ok,
            check,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(check: &'static str, detail: impl Into<String>) -> Line {
        Line {
            status: Status::Warn,
            check,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            status: Status::Fail,
            check,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.status {
            Status::Ok => "ok",
            Status::Fail => "FAIL",
            Status::Warn => "warn",
        };
        write!(f, "{s:<4} {}: {}", self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n     fix: {fix}")?;
        }
        Ok(())
    }
}

/// What `/dev/kvm` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFacts {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CHECK_EXTENSION` for each capability husk needs, by name.
    pub extensions: Vec<(&'static str, bool)>,
}

/// The host facts the checks need.
pub trait Probe {
    /// `/proc/cpuinfo`.
    fn cpuinfo(&self) -> std::io::Result<String>;
    /// Whether `/sys/module/<name>` exists.
    fn module_loaded(&self, name: &str) -> bool;
    /// Opens `/dev/kvm` read-write and asks for the API version and the extensions.
    fn kvm(&self) -> std::io::Result<KvmFacts>;
    /// Opens a file for reading.
    fn open_read(&self, path: &Path) -> std::io::Result<()>;
    /// Opens a file (a device) read-write.
    fn open_rw(&self, path: &Path) -> std::io::Result<()>;
    /// Reads a text file.
    fn read_to_string(&self, path: &Path) -> std::io::Result<String>;
    /// The first `name` on PATH, symlinks resolved.
    fn find_on_path(&self, name: &str) -> Option<PathBuf>;
    /// husk's configuration, as the shim loads it.
    fn husk_config(&self, explicit: Option<&Path>) -> Result<Loaded, ConfigError>;
    /// The directory the shim's defaults are relative to when the shim is not on PATH.
    fn fallback_bindir(&self) -> PathBuf;
    /// Runs `program` with `args`, bounded in time: how it ended and what it printed, or why
    /// it did not run to the end.
    fn run(&self, program: &Path, args: &[&str]) -> Result<ToolRun, String>;
}

/// How a tool [`Probe::run`] ran ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolRun {
    /// Its exit code (-1 when a signal ended it).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--containerd-config` (default [`CONTAINERD_CONFIG`]).
    pub containerd_config: Option<PathBuf>,
    /// `--containerd-address` (default [`CONTAINERD_ADDRESS`]).
    pub containerd_address: Option<PathBuf>,
}

/// Runs every check.
pub fn run(probe: &dyn Probe, opts: &CheckOptions) -> Vec<Line> {
    let mut lines = vec![virtualization(probe)];
    let (kvm_line, facts) = dev_kvm(probe);
    lines.push(kvm_line);
    lines.push(kvm_api(facts.as_ref()));
    lines.extend(artifacts(probe, opts.config.as_deref()));
    lines.push(tun(probe));
    lines.push(jail::check(probe));
    lines.push(cgroups::check(probe));
    let ccfg = opts
        .containerd_config
        .clone()
        .unwrap_or_else(|| PathBuf::from(CONTAINERD_CONFIG));
    lines.push(containerd_handler(probe, &ccfg));
    let address = opts
        .containerd_address
        .clone()
        .unwrap_or_else(|| PathBuf::from(CONTAINERD_ADDRESS));
    lines.push(live::check(probe, &address));
    lines.push(shim_on_path(probe));
    lines
}

/// True when any line failed.
pub fn failed(lines: &[Line]) -> bool {
    lines.iter().any(|l| l.status == Status::Fail)
}

fn virtualization(p: &dyn Probe) -> Line {
    const C: &str = "hardware virtualization";
    let flags = p.cpuinfo().unwrap_or_default();
    let has = |flag: &str| {
        flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    let (vmx, svm) = (has("vmx"), has("svm"));
    let cpu = match (vmx, svm) {
        (true, _) => "cpu flag vmx (VT-x)",
        (_, true) => "cpu flag svm (AMD-V)",
        _ => "no vmx/svm cpu flag",
    };
    if p.module_loaded("kvm_pvm") {
        return Line::fail(
            C,
            format!(
                "/dev/kvm is PVM (kvm_pvm, paravirtual KVM; {cpu}): PVM runs only guest kernels \
                 built for PVM, so husk's ordinary guest kernel cannot boot here"
            ),
            NESTED_HINT,
        );
    }
    for (module, what) in [("kvm_intel", "VT-x"), ("kvm_amd", "AMD-V")] {
        if p.module_loaded(module) {
            return Line::ok(C, format!("{what} through {module} ({cpu})"));
        }
    }
    match (vmx, svm) {
        (true, _) => Line::fail(
            C,
            "the CPU has VT-x (vmx) but kvm_intel is not loaded",
            "modprobe kvm_intel (and load it at boot: echo kvm_intel > /etc/modules-load.d/kvm.conf)",
        ),
        (_, true) => Line::fail(
            C,
            "the CPU has AMD-V (svm) but kvm_amd is not loaded",
            "modprobe kvm_amd (and load it at boot: echo kvm_amd > /etc/modules-load.d/kvm.conf)",
        ),
        _ => Line::fail(
            C,
            "the CPU shows no vmx or svm flag and no KVM module is loaded: virtualization is \
             off in the firmware, or this is a VM without nested virtualization",
            format!("enable VT-x/AMD-V in the firmware setup or nested virtualization for this VM, then modprobe kvm_intel or kvm_amd; or {NESTED_HINT}"),
        ),
    }
}

fn dev_kvm(p: &dyn Probe) -> (Line, Option<KvmFacts>) {
    const C: &str = "/dev/kvm";
    match p.kvm() {
        Ok(f) => (Line::ok(C, "opens read-write"), Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            Line::fail(
                C,
                "does not exist",
                "load kvm_intel or kvm_amd (modprobe); in a container, pass the device (--device /dev/kvm)",
            ),
            None,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (
            Line::fail(
                C,
                format!("cannot be opened read-write ({e})"),
                "containerd runs shims as root; to check as this user add it to the kvm group \
                 (usermod -aG kvm $USER, then log in again) or run `husk check` as root",
            ),
            None,
        ),
        Err(e) => (
            Line::fail(C, format!("unusable: {e}"), "check dmesg for KVM errors"),
            None,
        ),
    }
}

fn kvm_api(facts: Option<&KvmFacts>) -> Line {
    const C: &str = "KVM API";
    let Some(f) = facts else {
        return Line::warn(C, "not checked: /dev/kvm is not usable");
    };
    let missing: Vec<&str> = f
        .extensions
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    let names: Vec<&str> = f.extensions.iter().map(|(n, _)| *n).collect();
    if f.api_version != 12 {
        Line::fail(
            C,
            format!("KVM_GET_API_VERSION is {}, husk needs 12", f.api_version),
            "use a Linux kernel with the standard KVM API (any kernel since 2.6.22 has 12)",
        )
    } else if !missing.is_empty() {
        Line::fail(
            C,
            format!("version 12, but missing {}", missing.join(", ")),
            "this KVM lacks an in-kernel irqchip or eventfds; use kvm_intel or kvm_amd on a \
             stock kernel",
        )
    } else {
        Line::ok(C, format!("version 12; {}", names.join(", ")))
    }
}

fn artifacts(p: &dyn Probe, explicit: Option<&Path>) -> Vec<Line> {
    const C: &str = "husk config";
    let mut lines = Vec::new();
    let shim = p.find_on_path(SHIM);
    let bindir = shim
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| p.fallback_bindir());
    let (config, source) = match p.husk_config(explicit) {
        Ok(Loaded {
            config,
            source: Some(s),
        }) => {
            lines.push(Line::ok(C, format!("{}", s.display())));
            (config, Some(s))
        }
        Ok(Loaded {
            config,
            source: None,
        }) => {
            lines.push(Line::ok(
                C,
                format!(
                    "no file: built-in defaults, artifacts next to the shim in {}",
                    bindir.display()
                ),
            ));
            (config, None)
        }
        Err(e) => {
            lines.push(Line::fail(
                C,
                e.to_string(),
                "fix the file (unknown keys are refused; runtimeclass/config/husk-config.toml \
                 lists every key) or name another with --config",
            ));
            (HuskConfig::default(), None)
        }
    };
    let a = config.artifacts(&bindir);
    let (vmm, kernel, initramfs) = (lexical(&a.vmm), lexical(&a.kernel), lexical(&a.initramfs));
    let set_in = |key: &str| match &source {
        Some(s) => format!(
            "run `husk install`, or set `{key} = \"...\"` in {}",
            s.display()
        ),
        None => format!(
            "run `husk install`, or set `{key} = \"...\"` in {}",
            husk_protocol::config::SYSTEM_CONFIG
        ),
    };
    for (check, key, path) in [
        ("husk-vmm", "vmm", &vmm),
        ("guest kernel", "kernel", &kernel),
        ("guest initramfs", "initramfs", &initramfs),
    ] {
        lines.push(match p.open_read(path) {
            Ok(()) => Line::ok(check, path.display().to_string()),
            Err(e) => Line::fail(check, format!("{}: {e}", path.display()), set_in(key)),
        });
    }
    lines
}

/// Resolves `..` lexically: the shim's defaults are `<bindir>/../share/husk/...` with a
/// canonical `bindir`, so this is the file the shim opens, printed readably.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir if out.parent().is_some() => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn tun(p: &dyn Probe) -> Line {
    const C: &str = "/dev/net/tun";
    let path = Path::new("/dev/net/tun");
    match p.open_rw(path) {
        Ok(()) => Line::ok(C, "opens read-write (pod networking: one tap per pod NIC)"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Line::fail(
            C,
            "does not exist: pods cannot get a network",
            "modprobe tun (in a container, pass --device /dev/net/tun)",
        ),
        Err(e) => Line::fail(
            C,
            format!("cannot be opened read-write ({e}): pods cannot get a network"),
            "run as root (containerd's shims do) or grant access to /dev/net/tun",
        ),
    }
}

fn containerd_handler(p: &dyn Probe, path: &Path) -> Line {
    const C: &str = "containerd handler";
    let install = format!(
        "run `husk install --containerd-config {}` (or add runtimeclass/config/containerd-1.6-1.7.toml's \
         table by hand) and restart containerd",
        path.display()
    );
    let text = match p.read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return Line::fail(
                C,
                format!(
                    "{}: {e} (containerd's defaults have no husk handler)",
                    path.display()
                ),
                install,
            )
        }
    };
    // Without a handler in the main config, the one `husk install` puts in a drop-in the main
    // config imports.
    let drop_in = match containerd::find(&text) {
        Ok(None) => containerd::imports::drop_in(&text, path)
            .and_then(|d| p.read_to_string(&d).ok().map(|t| (d, t))),
        _ => None,
    };
    let (path, text) = match &drop_in {
        Some((d, t)) => (d.as_path(), t.as_str()),
        None => (path, text.as_str()),
    };
    match containerd::find(text) {
        Ok(Some(f)) if f.runtime_type.as_deref() == Some(containerd::RUNTIME_TYPE) => Line::ok(
            C,
            format!(
                "{} registers [{}] (config version {}){}",
                path.display(),
                f.version.header(),
                f.version.number(),
                f.config_path
                    .map(|c| format!(", ConfigPath {c}"))
                    .unwrap_or_default()
            ),
        ),
        Ok(Some(f)) => Line::fail(
            C,
            format!(
                "{} has [{}] with runtime_type {:?}, not {:?}",
                path.display(),
                f.version.header(),
                f.runtime_type.unwrap_or_default(),
                containerd::RUNTIME_TYPE
            ),
            format!("set runtime_type = \"{}\" there", containerd::RUNTIME_TYPE),
        ),
        Ok(None) => Line::fail(
            C,
            format!("{} has no husk runtime handler", path.display()),
            install,
        ),
        Err(e @ ContainerdConfigError::Version1) => Line::fail(
            C,
            format!("{}: version 1 format", path.display()),
            e.to_string(),
        ),
        Err(e) => Line::fail(
            C,
            format!("{}: {e}", path.display()),
            "fix the file; `containerd config dump` shows what containerd reads",
        ),
    }
}

fn shim_on_path(p: &dyn Probe) -> Line {
    const C: &str = "shim on PATH";
    match p.find_on_path(SHIM) {
        Some(s) => Line::ok(C, s.display().to_string()),
        None => Line::fail(
            C,
            format!("{SHIM} is not on PATH, so containerd cannot resolve io.containerd.husk.v2"),
            "`husk install` links it into /usr/local/bin; or put <prefix>/bin on containerd's PATH",
        ),
    }
}

#[cfg(test)]
mod tests;
