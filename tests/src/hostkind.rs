//! Which kind of KVM this host has, decided from the loaded kernel modules.
//!
//! `kvm_intel` or `kvm_amd` means hardware virtualization: micro-VMs run natively. `kvm_pvm`
//! means a paravirtual KVM that cannot run an ordinary 64-bit Linux guest: husk's guests must
//! run inside the nested test host. No module at all means no KVM.

use std::fmt;
use std::path::{Path, PathBuf};

/// What `/dev/kvm` on this host can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// VT-x or AMD-V through `kvm_intel` / `kvm_amd`: micro-VMs run natively.
    Hardware(Vendor),
    /// PVM (`kvm_pvm`): only PVM-built guests run; husk needs the nested test host.
    Pvm,
    /// KVM modules are loaded but `/dev/kvm` is missing.
    NoDevice,
    /// No KVM module at all.
    NoKvm,
}

/// The hardware virtualization extension in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Intel VT-x.
    Intel,
    /// AMD-V (SVM).
    Amd,
}

impl HostKind {
    /// True when husk's micro-VMs can run directly on this host.
    pub fn runs_natively(self) -> bool {
        matches!(self, HostKind::Hardware(_))
    }
}

impl fmt::Display for HostKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKind::Hardware(Vendor::Intel) => write!(f, "hardware virtualization (kvm_intel)"),
            HostKind::Hardware(Vendor::Amd) => write!(f, "hardware virtualization (kvm_amd)"),
            HostKind::Pvm => write!(
                f,
                "PVM paravirtual KVM (kvm_pvm): ordinary guests cannot run"
            ),
            HostKind::NoDevice => write!(f, "KVM modules loaded but /dev/kvm is missing"),
            HostKind::NoKvm => write!(f, "no KVM module loaded"),
        }
    }
}

/// The facts detection needs, behind a trait so the decision can be tested without a real host.
pub trait KvmProbe {
    /// Whether `/sys/module/<name>` exists.
    fn module_loaded(&self, name: &str) -> bool;
    /// Whether `/dev/kvm` exists.
    fn dev_kvm_exists(&self) -> bool;
}

/// Reads the real `/sys/module` and `/dev/kvm` (below `root`, normally `/`).
#[derive(Debug, Clone)]
pub struct SysProbe {
    root: PathBuf,
}

impl SysProbe {
    /// Probes the running system.
    pub fn system() -> Self {
        SysProbe {
            root: PathBuf::from("/"),
        }
    }

    /// Probes a tree laid out like `/` (for tests).
    pub fn at(root: &Path) -> Self {
        SysProbe {
            root: root.to_path_buf(),
        }
    }
}

impl KvmProbe for SysProbe {
    fn module_loaded(&self, name: &str) -> bool {
        self.root.join("sys/module").join(name).exists()
    }

    fn dev_kvm_exists(&self) -> bool {
        self.root.join("dev/kvm").exists()
    }
}

/// Decides the host kind. PVM wins over everything: where `kvm_pvm` is loaded, `/dev/kvm` may
/// be served by it even if a hardware module is present too.
pub fn detect(probe: &impl KvmProbe) -> HostKind {
    let vendor = if probe.module_loaded("kvm_intel") {
        Some(Vendor::Intel)
    } else if probe.module_loaded("kvm_amd") {
        Some(Vendor::Amd)
    } else {
        None
    };
    match (
        probe.module_loaded("kvm_pvm"),
        vendor,
        probe.dev_kvm_exists(),
    ) {
        (true, _, _) => HostKind::Pvm,
        (false, Some(v), true) => HostKind::Hardware(v),
        (false, Some(_), false) => HostKind::NoDevice,
        (false, None, _) if probe.module_loaded("kvm") && !probe.dev_kvm_exists() => {
            HostKind::NoDevice
        }
        (false, None, _) => HostKind::NoKvm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        modules: &'static [&'static str],
        dev_kvm: bool,
    }

    impl KvmProbe for Fake {
        fn module_loaded(&self, name: &str) -> bool {
            self.modules.contains(&name)
        }
        fn dev_kvm_exists(&self) -> bool {
            self.dev_kvm
        }
    }

    #[test]
    fn module_table_decides_native_or_nested() {
        let cases: &[(&[&str], bool, HostKind)] = &[
            (
                &["kvm", "kvm_intel"],
                true,
                HostKind::Hardware(Vendor::Intel),
            ),
            (&["kvm", "kvm_amd"], true, HostKind::Hardware(Vendor::Amd)),
            (&["kvm", "kvm_pvm"], true, HostKind::Pvm),
            (&["kvm", "kvm_intel", "kvm_pvm"], true, HostKind::Pvm),
            (&["kvm", "kvm_amd"], false, HostKind::NoDevice),
            (&["kvm"], false, HostKind::NoDevice),
            (&[], false, HostKind::NoKvm),
        ];
        for (modules, dev_kvm, want) in cases {
            let got = detect(&Fake {
                modules,
                dev_kvm: *dev_kvm,
            });
            assert_eq!(got, *want, "modules {modules:?}, /dev/kvm {dev_kvm}");
            assert_eq!(got.runs_natively(), matches!(want, HostKind::Hardware(_)));
        }
    }

    #[test]
    fn sys_probe_reads_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/module/kvm_amd")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/kvm"), "").unwrap();
        assert_eq!(
            detect(&SysProbe::at(dir.path())),
            HostKind::Hardware(Vendor::Amd)
        );
    }
}
