//! Host paths below a root: `/` normally, `/host` in the DaemonSet, a temporary directory in
//! tests. Paths recorded and written into config files are host paths; only file operations
//! go through [`Root::at`].

use std::path::{Path, PathBuf};

/// The shim binary's name (containerd derives it from `io.containerd.husk.v2`).
pub const SHIM: &str = "containerd-shim-husk-v2";
/// The VMM binary.
pub const VMM: &str = "husk-vmm";
/// This tool.
pub const CLI: &str = "husk";
/// The guest kernel.
pub const KERNEL: &str = "vmlinux";
/// The guest initramfs.
pub const INITRD: &str = "husk-initrd.img";
/// The install record, in `<prefix>/share/husk/`.
pub const RECORD: &str = "install.json";
/// The node label the RuntimeClass selects on.
pub const NODE_LABEL: &str = "husk.io/runtime";

/// Where the host's `/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    /// A root directory (must be absolute).
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root(dir.into())
    }

    /// True for `/` (commands then run directly, not through `nsenter`).
    pub fn is_system(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// The path of host path `host` from here.
    pub fn at(&self, host: &Path) -> PathBuf {
        let rel = host.strip_prefix("/").unwrap_or(host);
        if rel.as_os_str().is_empty() {
            self.0.clone()
        } else {
            self.0.join(rel)
        }
    }
}

/// Makes a user-given path absolute (relative to the working directory).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The install layout under a prefix (host paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<prefix>`.
    pub prefix: PathBuf,
}

impl Layout {
    /// `<prefix>/bin`.
    pub fn bin(&self) -> PathBuf {
        self.prefix.join("bin")
    }
    /// `<prefix>/share/husk`.
    pub fn share(&self) -> PathBuf {
        self.prefix.join("share/husk")
    }
    /// `<prefix>/share/husk/install.json`.
    pub fn record(&self) -> PathBuf {
        self.share().join(RECORD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_maps_host_paths() {
        let r = Root::new("/host");
        assert_eq!(
            r.at(Path::new("/etc/husk")),
            PathBuf::from("/host/etc/husk")
        );
        assert_eq!(r.at(Path::new("/")), PathBuf::from("/host"));
        assert!(!r.is_system());
        let s = Root::new("/");
        assert_eq!(s.at(Path::new("/etc")), PathBuf::from("/etc"));
        assert!(s.is_system());
    }
}
