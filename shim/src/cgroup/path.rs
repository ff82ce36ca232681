//! An OCI `linux.cgroupsPath`, as runc reads it, turned into a path relative to a hierarchy's
//! root.
//!
//! Two forms exist, chosen by who made the spec:
//! - cgroupfs: a slash path, `/kubepods/burstable/pod<uid>/<id>` (containerd's CRI with a
//!   `cgroup_parent` that is not a systemd slice, and `ctr run`'s `/<namespace>/<id>`). A
//!   relative path is taken from the root as well (husk is not a child of the pod's parent,
//!   so runc's "relative to my own cgroup" would put the VM under containerd).
//! - systemd: `slice:prefix:name`, what containerd's CRI writes when the pod's
//!   `cgroup_parent` ends in `.slice` (kubelet's systemd driver). The slice expands as systemd
//!   does (`kubepods-burstable-pod1.slice` lives in `kubepods.slice/kubepods-burstable.slice/`)
//!   and the unit is `<prefix>-<name>.scope`. husk makes that directory itself; systemd does
//!   not own it.
//!
//! Every component is checked: no `..`, no NUL, no empty slice names (a `.` in the middle is
//! dropped, as the kernel would); a bad path is refused naming `linux.cgroupsPath`.

use std::path::{Component, Path, PathBuf};

/// A cgroupsPath husk cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("linux.cgroupsPath {path:?}: {why}")]
pub struct BadCgroupPath {
    /// The path as the spec had it.
    pub path: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The cgroup a spec asks for, relative to a hierarchy's root (never empty, never escaping).
pub fn parse(spec_path: &str) -> Result<PathBuf, BadCgroupPath> {
    let bad = |why| BadCgroupPath {
        path: spec_path.to_string(),
        why,
    };
    if spec_path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let rel = if is_systemd(spec_path) {
        systemd(spec_path).map_err(bad)?
    } else {
        cgroupfs(spec_path).map_err(bad)?
    };
    if rel.as_os_str().is_empty() {
        return Err(bad(
            "names the root cgroup, which husk does not move a VM into",
        ));
    }
    Ok(rel)
}

/// `slice:prefix:name`: exactly two colons and no slash (a cgroupfs path may hold a colon
/// only inside a component, and always has a slash in the forms containerd writes).
fn is_systemd(p: &str) -> bool {
    p.matches(':').count() == 2 && !p.contains('/')
}

fn cgroupfs(p: &str) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir => return Err("has a `.` component"),
            Component::ParentDir => return Err("has a `..` component"),
            Component::Prefix(_) => return Err("is not a Linux path"),
        }
    }
    Ok(out)
}

fn systemd(p: &str) -> Result<PathBuf, &'static str> {
    let mut parts = p.splitn(3, ':');
    let (slice, prefix, name) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if name.is_empty() {
        return Err("has no unit name after the second `:`");
    }
    let mut out = expand_slice(if slice.is_empty() {
        "system.slice"
    } else {
        slice
    })?;
    let unit = if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    if unit.contains('/') || unit.starts_with('.') {
        return Err("has a unit name that is not a plain name");
    }
    out.push(unit);
    Ok(out)
}

/// `a-b-c.slice` lives in `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, &'static str> {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err("has a slice that does not end in `.slice`");
    };
    let mut out = PathBuf::new();
    if stem == "-" {
        return Ok(out);
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err("has a slice name with an empty part");
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push(format!("{prefix}.slice"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_taken_from_the_root() {
        assert_eq!(
            parse("/kubepods/burstable/pod1/abc").unwrap(),
            PathBuf::from("kubepods/burstable/pod1/abc")
        );
        assert_eq!(
            parse("/default/ctr1").unwrap(),
            PathBuf::from("default/ctr1")
        );
        assert_eq!(parse("husk/x").unwrap(), PathBuf::from("husk/x"));
        assert_eq!(parse("//a//b/").unwrap(), PathBuf::from("a/b"));
    }

    #[test]
    fn systemd_paths_expand_their_slice() {
        assert_eq!(
            parse("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            parse(":husk:abc").unwrap(),
            PathBuf::from("system.slice/husk-abc.scope")
        );
        assert_eq!(parse("-.slice::abc").unwrap(), PathBuf::from("abc.scope"));
    }

    #[test]
    fn escapes_and_nonsense_are_refused_by_name() {
        for (p, why) in [
            ("/a/../../etc", "`..`"),
            ("/", "root cgroup"),
            ("", "root cgroup"),
            ("a\0b", "NUL"),
            ("kubepods.slice:cri:", "no unit name"),
            ("kubepods:cri:abc", "`.slice`"),
            ("kube--pods.slice:cri:abc", "empty part"),
            ("-kube.slice:cri:abc", "empty part"),
        ] {
            let e = parse(p).unwrap_err();
            assert!(e.to_string().contains("linux.cgroupsPath"), "{e}");
            assert!(e.why.contains(why), "{p:?}: {e}");
        }
    }
}
