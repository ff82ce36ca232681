//! Which cgroup hierarchy this host has, read from `/proc/self/mountinfo`:
//! - unified: cgroup v2 alone (current distributions);
//! - hybrid: the v1 controllers, plus a v2 hierarchy without controllers (systemd's
//!   `/sys/fs/cgroup/unified`);
//! - legacy: v1 alone.
//!
//! In the two v1 layouts every v1 hierarchy is joined (as runc's cgroupfs driver does), and
//! in hybrid the v2 one as well, so tools that look in either find the VM where the pod is.

use std::path::PathBuf;

/// One mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// Its controllers and names, as its super options list them (`memory`, `cpu`,
    /// `name=systemd`).
    pub controllers: Vec<String>,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 only, mounted here.
    Unified(PathBuf),
    /// cgroup v1 hierarchies, and the v2 one when mounted too (hybrid).
    V1 {
        /// One entry per hierarchy (a hierarchy mounted twice is listed once).
        mounts: Vec<V1Mount>,
        /// The v2 hierarchy of a hybrid layout.
        unified: Option<PathBuf>,
    },
}

/// No cgroup file system is mounted.
#[derive(Debug, thiserror::Error)]
#[error("no cgroup file system is mounted (neither cgroup2 nor cgroup v1 in /proc/self/mountinfo)")]
pub struct NoCgroups;

impl Hierarchy {
    /// This host's layout.
    pub fn detect() -> Result<Hierarchy, NoCgroups> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Hierarchy::from_mountinfo(&text)
    }

    /// The layout a mountinfo text describes.
    pub fn from_mountinfo(text: &str) -> Result<Hierarchy, NoCgroups> {
        let mut mounts: Vec<V1Mount> = Vec::new();
        let mut unified = None;
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount) = left.split(' ').nth(4) else {
                continue;
            };
            let mut r = right.split(' ');
            let (fstype, options) = (r.next().unwrap_or(""), r.nth(1).unwrap_or(""));
            let mount = PathBuf::from(unescape(mount));
            match fstype {
                "cgroup2" if unified.is_none() => unified = Some(mount),
                "cgroup" => {
                    let controllers: Vec<String> = options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !is_mount_flag(o))
                        .map(String::from)
                        .collect();
                    if !mounts.iter().any(|m| m.controllers == controllers) {
                        mounts.push(V1Mount { mount, controllers });
                    }
                }
                _ => {}
            }
        }
        match (mounts.is_empty(), unified) {
            (false, unified) => Ok(Hierarchy::V1 { mounts, unified }),
            (true, Some(root)) => Ok(Hierarchy::Unified(root)),
            (true, None) => Err(NoCgroups),
        }
    }

    /// The hierarchies' roots a cgroup is made in, the v2 one first.
    pub fn roots(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::Unified(root) => vec![root.clone()],
            Hierarchy::V1 { mounts, unified } => unified
                .iter()
                .cloned()
                .chain(mounts.iter().map(|m| m.mount.clone()))
                .collect(),
        }
    }

    /// The root of the hierarchy holding the memory controller.
    pub fn memory_root(&self) -> Option<(PathBuf, bool)> {
        match self {
            Hierarchy::Unified(root) => Some((root.clone(), true)),
            Hierarchy::V1 { mounts, .. } => mounts
                .iter()
                .find(|m| m.controllers.iter().any(|c| c == "memory"))
                .map(|m| (m.mount.clone(), false)),
        }
    }

    /// For `husk check` and logs.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::Unified(root) => format!("cgroup v2 (unified, {})", root.display()),
            Hierarchy::V1 {
                unified: Some(u),
                mounts,
            } => format!(
                "cgroup v1 (hybrid: {} v1 hierarchies, v2 at {})",
                mounts.len(),
                u.display()
            ),
            Hierarchy::V1 {
                unified: None,
                mounts,
            } => format!("cgroup v1 (legacy: {} hierarchies)", mounts.len()),
        }
    }
}

/// Super options that are not controller names.
fn is_mount_flag(o: &str) -> bool {
    matches!(
        o,
        "relatime" | "noatime" | "nosuid" | "nodev" | "noexec" | "clone_children" | "nsdelegate"
    ) || o.starts_with("release_agent=")
        || o.starts_with("xattr")
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: &u8| (b'0'..=b'7').contains(c);
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(octal) {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,relatime,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,relatime,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,relatime,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,relatime
35 30 0:28 / /mnt/memory\\040again rw,relatime - cgroup cgroup rw,relatime,memory
";

    #[test]
    fn hybrid_lists_each_v1_hierarchy_once_and_the_v2_one() {
        let h = Hierarchy::from_mountinfo(HYBRID).unwrap();
        let Hierarchy::V1 { mounts, unified } = &h else {
            panic!("{h:?}")
        };
        assert_eq!(unified.as_deref(), Some("/sys/fs/cgroup/unified".as_ref()));
        let names: Vec<_> = mounts.iter().map(|m| m.controllers.join(",")).collect();
        assert_eq!(names, ["cpu", "memory", "name=systemd"]);
        assert_eq!(h.roots()[0], PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            h.memory_root(),
            Some((PathBuf::from("/sys/fs/cgroup/memory"), false))
        );
        assert!(h.describe().contains("hybrid"), "{}", h.describe());
    }

    #[test]
    fn unified_and_legacy_and_none() {
        let u = "29 1 0:25 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let h = Hierarchy::from_mountinfo(u).unwrap();
        assert_eq!(h, Hierarchy::Unified("/sys/fs/cgroup".into()));
        assert!(h.describe().starts_with("cgroup v2"));
        let legacy = "31 30 0:27 / /c/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let h = Hierarchy::from_mountinfo(legacy).unwrap();
        assert!(h.describe().contains("legacy"), "{}", h.describe());
        assert_eq!(h.memory_root(), None);
        assert!(Hierarchy::from_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda rw\n").is_err());
    }

    #[test]
    fn escaped_mount_points_are_read_back() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}
