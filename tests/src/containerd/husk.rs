//! What the harness needs of husk: its binaries and guest artifacts ([`HuskArtifacts`], found
//! from the environment `make e2e` sets) and the husk config it writes for containerd's shims
//! ([`HuskSettings`]).

use std::path::{Path, PathBuf};

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
    /// `pin_vcpus` in the husk config: on in the nested test host (see [`crate::e2e::pin_vcpus`]).
    pub pin_vcpus: bool,
    /// `liveness_timeout_secs`: generous by default (a busy nested test host is slow, not hung).
    pub liveness_timeout_secs: u64,
    /// `writable_limit_mib` (0: off, the default).
    pub writable_limit_mib: u64,
    /// `templates`: off unless a test turns it on. The product default is on, but a
    /// template's background build is a second VM beside the test's, which the suites'
    /// leak checks (no husk-vmm, no state left) would see; the `templates` suite tests it.
    pub templates: bool,
}

/// The `writable_dir` of a test's husk config: beside its state directory.
pub fn writable_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.with_file_name("writable")
}

impl HuskSettings {
    /// Test defaults: 120 s boot timeout, `quiet`, 1 vCPU, 256 MiB, vCPUs pinned in the
    /// nested test host.
    pub fn new(artifacts: HuskArtifacts) -> HuskSettings {
        HuskSettings {
            artifacts,
            boot_timeout_secs: 120,
            extra_cmdline: "quiet".into(),
            vcpus: 1,
            memory_mib: 256,
            pin_vcpus: crate::e2e::pin_vcpus(),
            liveness_timeout_secs: 180,
            writable_limit_mib: 0,
            templates: false,
        }
    }

    /// The husk config file text, with husk's per-sandbox state under `state_dir`.
    pub fn toml(&self, state_dir: &Path) -> String {
        let a = &self.artifacts;
        format!(
            "# written by husk-tests (src/containerd/husk.rs)\nvmm = {:?}\nkernel = {:?}\ninitramfs = {:?}\n\
             state_dir = {:?}\nboot_timeout_secs = {}\nextra_cmdline = {:?}\nvcpus = {}\n\
             memory_mib = {}\nshutdown_timeout_secs = 20\npin_vcpus = {}\n\
             liveness_timeout_secs = {}\nwritable_limit_mib = {}\nwritable_dir = {:?}\n\
             templates = {}\ntemplate_dir = {:?}\n",
            a.vmm.display().to_string(),
            a.kernel.display().to_string(),
            a.initramfs.display().to_string(),
            state_dir.display().to_string(),
            self.boot_timeout_secs,
            self.extra_cmdline,
            self.vcpus,
            self.memory_mib,
            self.pin_vcpus,
            self.liveness_timeout_secs,
            self.writable_limit_mib,
            writable_dir(state_dir).display().to_string(),
            self.templates,
            template_dir(state_dir).display().to_string(),
        )
    }
}

/// The `template_dir` of a test's husk config: beside its state directory.
pub fn template_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.with_file_name("templates")
}

#[cfg(test)]
mod tests {
    use super::*;

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
