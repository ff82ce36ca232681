//! husk's configuration file (`/etc/husk/config.toml`), with defaults that need no file.
//!
//! Where it comes from, first match wins: the runtime options' `ConfigPath` (CRI
//! `[...runtimes.husk.options] ConfigPath`, `ctr run --runtime-config-path`), the `HUSK_CONFIG`
//! environment variable (containerd passes its environment to shims), `/etc/husk/config.toml`,
//! else the built-in defaults. A path that was named explicitly must exist; unknown keys are
//! refused so a typo does not silently fall back to a default.
//!
//! Artifacts default to paths relative to the shim binary, so any install prefix works:
//! `<bindir>/husk-vmm`, `<bindir>/../share/husk/vmlinux`, `<bindir>/../share/husk/husk-initrd.img`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/husk/config.toml";
/// Environment variable naming a configuration file.
pub const CONFIG_ENV: &str = "HUSK_CONFIG";
/// The shipped example: every key, commented, at its default. `husk install` writes it as the
/// base of `/etc/husk/config.toml`, `make install` ships it as `share/husk/config.toml.example`,
/// and `runtimeclass/config/husk-config.toml` links to it.
pub const EXAMPLE: &str = include_str!("../husk-config.toml");

/// The smallest writable-layer limit: room for an ext4 file system's own metadata and a
/// container's first writes.
pub const MIN_WRITABLE_MIB: u64 = 16;
/// The largest writable-layer limit: 16 TiB, ext4's largest file system with 4 KiB blocks (and
/// far from overflowing a byte count).
pub const MAX_WRITABLE_MIB: u64 = 16 << 20;

/// A configuration that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("husk config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this version (the message names the key).
    #[error("husk config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("husk config {path}: {message}")]
    Value {
        /// The file (or `<defaults>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A VM-size annotation is not usable.
    #[error("annotation {key}={value:?}: {message}")]
    Annotation {
        /// The annotation key.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

/// The contents of `config.toml`. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HuskConfig {
    /// The `husk-vmm` binary (default: next to the shim).
    pub vmm: Option<PathBuf>,
    /// Guest kernel (default: `<bindir>/../share/husk/vmlinux`).
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with husk-agent as `/init` (default: `<bindir>/../share/husk/husk-initrd.img`).
    pub initramfs: Option<PathBuf>,
    /// vCPUs per VM unless an annotation says otherwise.
    pub vcpus: u8,
    /// Guest RAM in MiB unless an annotation says otherwise.
    pub memory_mib: u32,
    /// Appended to the guest kernel command line.
    pub extra_cmdline: String,
    /// How long the agent may take to answer after husk-vmm started.
    pub boot_timeout_secs: u64,
    /// How long a VM may take to stop after the agent was asked to shut down.
    pub shutdown_timeout_secs: u64,
    /// How long a booted guest may leave the agent's health check unanswered before its VM is
    /// killed and every task of the pod exits 137 (`vm::liveness`); 0 turns the watch off.
    pub liveness_timeout_secs: u64,
    /// Per-sandbox state (`<state_dir>/<sandbox-id>`); keep it short (Unix socket paths).
    pub state_dir: PathBuf,
    /// Pin each vCPU thread to one host CPU (see `vm::pinning`).
    pub pin_vcpus: bool,
    /// Give each VM a virtio-balloon with free page reporting, so memory its guest frees goes
    /// back to the host.
    pub free_page_reporting: bool,
    /// Restore pods from VM templates where one fits, and make one in the background when a
    /// pod of a new shape boots (the shim's `template` module).
    pub templates: bool,
    /// Where templates live (`<template_dir>/<key>`).
    pub template_dir: PathBuf,
    /// Size limit in MiB of what a pod's containers can write to their root file systems
    /// together (`writable`): their overlay upper directories live on a file system of this
    /// size instead of in containerd's snapshots. 0: no husk limit (as under runc).
    pub writable_limit_mib: u64,
    /// Where the limited file systems' backing files go (a disk, not `/run`): each is unlinked
    /// once mounted, so nothing is left there even after a crash.
    pub writable_dir: PathBuf,
    /// Log level of the shim (`error`, `warn`, `info`, `debug`, `trace`); containerd's
    /// `-debug` raises it to `debug`.
    pub log_level: String,
}

impl Default for HuskConfig {
    fn default() -> Self {
        HuskConfig {
            vmm: None,
            kernel: None,
            initramfs: None,
            vcpus: 1,
            memory_mib: 256,
            extra_cmdline: "quiet".into(),
            boot_timeout_secs: 30,
            shutdown_timeout_secs: 10,
            liveness_timeout_secs: 60,
            state_dir: PathBuf::from("/run/husk"),
            pin_vcpus: false,
            free_page_reporting: true,
            templates: true,
            template_dir: PathBuf::from("/var/lib/husk/templates"),
            writable_limit_mib: 0,
            writable_dir: PathBuf::from("/var/lib/husk/writable"),
            log_level: "info".into(),
        }
    }
}

/// A loaded configuration and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The values.
    pub config: HuskConfig,
    /// The file, or `None` for the built-in defaults.
    pub source: Option<PathBuf>,
}

/// The three files a VM is made of, resolved to paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// `husk-vmm`.
    pub vmm: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initramfs: PathBuf,
}

impl HuskConfig {
    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: HuskConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Value {
            path: path.to_path_buf(),
            message,
        };
        if self.boot_timeout_secs == 0 {
            return Err(bad("boot_timeout_secs must be at least 1".into()));
        }
        if !self.writable_dir.is_absolute() {
            return Err(bad(format!(
                "writable_dir {:?} must be an absolute path",
                self.writable_dir
            )));
        }
        if self.writable_limit_mib != 0 && self.writable_limit_mib < MIN_WRITABLE_MIB {
            return Err(bad(format!(
                "writable_limit_mib = {} is below {MIN_WRITABLE_MIB} (0 turns the limit off)",
                self.writable_limit_mib
            )));
        }
        if self.writable_limit_mib > MAX_WRITABLE_MIB {
            return Err(bad(format!(
                "writable_limit_mib = {} is above {MAX_WRITABLE_MIB} (16 TiB, ext4's limit)",
                self.writable_limit_mib
            )));
        }
        if !self.state_dir.is_absolute() {
            return Err(bad(format!(
                "state_dir {:?} must be an absolute path",
                self.state_dir
            )));
        }
        if !matches!(
            self.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(bad(format!(
                "log_level {:?} must be one of error, warn, info, debug, trace",
                self.log_level
            )));
        }
        Ok(())
    }

    /// The agent's boot deadline.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }

    /// How long a booted guest may stay silent (zero: not watched).
    pub fn liveness_timeout(&self) -> Duration {
        Duration::from_secs(self.liveness_timeout_secs)
    }

    /// The VM's stop deadline.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs.max(1))
    }

    /// Resolves the artifacts, defaulting relative to `bindir` (the shim binary's directory).
    pub fn artifacts(&self, bindir: &Path) -> Artifacts {
        let share = bindir.join("../share/husk");
        Artifacts {
            vmm: self.vmm.clone().unwrap_or_else(|| bindir.join("husk-vmm")),
            kernel: self.kernel.clone().unwrap_or_else(|| share.join("vmlinux")),
            initramfs: self
                .initramfs
                .clone()
                .unwrap_or_else(|| share.join("husk-initrd.img")),
        }
    }
}

/// The directory of the running shim binary (for artifact defaults).
pub fn shim_bindir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

/// Loads the configuration: `explicit` (runtime options), then `$HUSK_CONFIG`, then
/// `/etc/husk/config.toml`, then defaults.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env = std::env::var_os(CONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    load_from(explicit, env.as_deref(), Path::new(SYSTEM_CONFIG))
}

fn load_from(
    explicit: Option<&Path>,
    env: Option<&Path>,
    system: &Path,
) -> Result<Loaded, ConfigError> {
    let named = explicit.or(env);
    let path = match named {
        Some(p) => p.to_path_buf(),
        None if system.exists() => system.to_path_buf(),
        None => {
            return Ok(Loaded {
                config: HuskConfig::default(),
                source: None,
            })
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(Loaded {
        config: HuskConfig::parse(&text, &path)?,
        source: Some(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let l = load_from(None, None, &dir.path().join("none.toml")).unwrap();
        assert_eq!(l.source, None);
        assert_eq!(l.config.vcpus, 1);
        assert_eq!(l.config.memory_mib, 256);
        let a = l.config.artifacts(Path::new("/opt/husk/bin"));
        assert_eq!(a.vmm, Path::new("/opt/husk/bin/husk-vmm"));
        assert_eq!(a.kernel, Path::new("/opt/husk/bin/../share/husk/vmlinux"));
        assert_eq!(
            a.initramfs,
            Path::new("/opt/husk/bin/../share/husk/husk-initrd.img")
        );
    }

    #[test]
    fn explicit_beats_env_beats_system() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, vcpus: u8| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("vcpus = {vcpus}\n")).unwrap();
            p
        };
        let (e, v, s) = (write("e.toml", 2), write("v.toml", 3), write("s.toml", 4));
        assert_eq!(load_from(Some(&e), Some(&v), &s).unwrap().config.vcpus, 2);
        assert_eq!(load_from(None, Some(&v), &s).unwrap().config.vcpus, 3);
        let l = load_from(None, None, &s).unwrap();
        assert_eq!((l.config.vcpus, l.source), (4, Some(s)));
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = load_from(Some(&missing), None, &missing).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        let p = dir.path().join("typo.toml");
        std::fs::write(&p, "vcpu = 2\n").unwrap();
        let e = load_from(Some(&p), None, &p).unwrap_err().to_string();
        assert!(e.contains("typo.toml") && e.contains("vcpu"), "{e}");
        std::fs::write(&p, "state_dir = \"run/husk\"\n").unwrap();
        let e = load_from(Some(&p), None, &p).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        std::fs::write(&p, "boot_timeout_secs = 0\n").unwrap();
        assert!(load_from(Some(&p), None, &p).is_err());
        for (limit, why) in [(8, "is below 16"), (1u64 << 40, "is above 16777216")] {
            std::fs::write(&p, format!("writable_limit_mib = {limit}\n")).unwrap();
            let e = load_from(Some(&p), None, &p).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn the_shipped_example_parses_and_its_uncommented_form_too() {
        let example = EXAMPLE;
        let c = HuskConfig::parse(example, Path::new("husk-config.toml")).unwrap();
        assert_eq!(c, HuskConfig::default());
        let uncommented: String = example
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|r| {
                        r.split_once(" = ").is_some_and(|(k, _)| {
                            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        })
                    })
                    .unwrap_or(l)
            })
            .map(|l| if l.starts_with('#') { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let u = HuskConfig::parse(&uncommented, Path::new("uncommented")).unwrap();
        assert_eq!(u.vmm.as_deref(), Some(Path::new("/usr/local/bin/husk-vmm")));
        assert_eq!(u.boot_timeout_secs, 30);
    }

    #[test]
    fn a_full_file_parses() {
        let text = r#"
vmm = "/usr/local/bin/husk-vmm"
kernel = "/usr/local/share/husk/vmlinux"
initramfs = "/usr/local/share/husk/husk-initrd.img"
vcpus = 2
memory_mib = 512
extra_cmdline = "quiet"
boot_timeout_secs = 120
shutdown_timeout_secs = 5
state_dir = "/run/husk"
log_level = "debug"
"#;
        let c = HuskConfig::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.boot_timeout(), Duration::from_secs(120));
        assert_eq!(
            c.artifacts(Path::new("/x")).vmm,
            Path::new("/usr/local/bin/husk-vmm")
        );
    }
}
