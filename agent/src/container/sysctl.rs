//! The pod's network sysctls.
//!
//! Inside the VM the pod's network namespace is the guest's root one: [`super::spec`] drops the
//! `network` namespace entry that names the pod's (host) namespace, so the container joins the
//! guest's. libcontainer then sees no network namespace in the spec and refuses every `net.*`
//! sysctl as one for the host's network namespace, as runc does for a host-network container.
//! But containerd 2.x puts two on every pod's sandbox container
//! (`net.ipv4.ip_unprivileged_port_start=0`, `net.ipv4.ping_group_range=0 2147483647`), and
//! kubelet passes a pod's safe and allowed sysctls (`net.ipv4.ip_local_port_range`, ...).
//!
//! So for a container that joins the pod's network namespace, the agent takes the `net.*`
//! entries out of the spec and writes them itself under `/proc/sys` before the container is
//! created: into the guest's root namespace, which only this pod uses, as runc writes them into
//! the pod's own namespace. Keys are checked component by component (no `..`, no separators
//! other than `.` and `/`), so a key can name nothing outside `/proc/sys/net`.
//!
//! A sandbox container's anchor ([`crate::container::anchor::setup`]) writes its spec's other
//! sysctls with the same checks, from inside its own namespaces, as libcontainer's init would.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Linux;

use crate::error::{AgentError, Result};

/// Where the guest's sysctls are.
pub const PROC_SYS: &str = "/proc/sys";

/// One sysctl: the key as the spec spells it, and its value.
pub type Sysctl = (String, String);

/// Removes the `net.*` sysctls from `linux` and returns them, in key order.
pub fn take_net(linux: &mut Linux) -> Vec<Sysctl> {
    let Some(mut all) = linux.sysctl().clone() else {
        return Vec::new();
    };
    let mut net: Vec<Sysctl> = Vec::new();
    all.retain(|k, v| {
        if k.starts_with("net.") || k.starts_with("net/") {
            net.push((k.clone(), v.clone()));
            false
        } else {
            true
        }
    });
    net.sort();
    linux.set_sysctl((!all.is_empty()).then_some(all));
    net
}

/// Which sysctls a caller may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only `net.*` (the agent, in the guest's root namespaces).
    Network,
    /// Any (a sandbox container's anchor, in its own namespaces).
    Any,
}

/// The file of `key` below `root` (`/proc/sys`). Refuses keys that are not plain paths, or not
/// `net.` ones for [`Scope::Network`].
fn path_of(root: &Path, key: &str, scope: Scope) -> Result<PathBuf> {
    let bad = |why: &str| AgentError::InvalidArgument(format!("linux.sysctl {key:?}: {why}"));
    if key.len() > 256 {
        return Err(bad("longer than 256 bytes"));
    }
    let mut path = root.to_path_buf();
    for (i, part) in key.split(['.', '/']).enumerate() {
        if i == 0 && scope == Scope::Network && part != "net" {
            return Err(bad("not a network sysctl"));
        }
        let plain = !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plain {
            return Err(bad(
                "a component is empty or has characters a sysctl name has not",
            ));
        }
        path.push(part);
    }
    Ok(path)
}

/// Writes each sysctl under `root` (`/proc/sys` in the guest). The first that fails ends it,
/// with an error naming the key: an unknown one as InvalidArgument, a refused value as the
/// kernel's error.
pub fn apply(root: &Path, sysctls: &[Sysctl], scope: Scope) -> Result<()> {
    for (key, value) in sysctls {
        let path = path_of(root, key, scope)?;
        if value.contains('\0') {
            return Err(AgentError::InvalidArgument(format!(
                "linux.sysctl {key:?}: the value has a NUL byte"
            )));
        }
        if !path.is_file() {
            return Err(AgentError::InvalidArgument(format!(
                "linux.sysctl {key:?}: the guest kernel has no such sysctl"
            )));
        }
        std::fs::write(&path, value.as_bytes())
            .map_err(AgentError::io(format!("setting sysctl {key}={value:?}")))?;
        tracing::debug!(key = key.as_str(), value = value.as_str(), "pod sysctl set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn linux(pairs: &[(&str, &str)]) -> Linux {
        let mut l = Linux::default();
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.set_sysctl(Some(map));
        l
    }

    #[test]
    fn net_sysctls_are_taken_and_the_rest_stay() {
        let mut l = linux(&[
            ("net.ipv4.ping_group_range", "0 2147483647"),
            ("kernel.shm_rmid_forced", "1"),
            ("net.ipv4.ip_unprivileged_port_start", "0"),
        ]);
        let net = take_net(&mut l);
        assert_eq!(
            net,
            vec![
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ]
        );
        let rest = l.sysctl().clone().unwrap();
        assert_eq!(rest.len(), 1);
        assert!(rest.contains_key("kernel.shm_rmid_forced"));

        let mut only_net = linux(&[("net.core.somaxconn", "1024")]);
        assert_eq!(take_net(&mut only_net).len(), 1);
        assert!(only_net.sysctl().is_none());
        assert!(take_net(&mut Linux::default()).is_empty());
    }

    #[test]
    fn sysctls_are_written_below_the_root() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("net/ipv4");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ping_group_range"), "1 0\n").unwrap();
        std::fs::write(dir.join("ip_unprivileged_port_start"), "1024\n").unwrap();
        apply(
            d.path(),
            &[
                ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
                ("net/ipv4/ip_unprivileged_port_start".into(), "0".into()),
            ],
            Scope::Network,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("ping_group_range")).unwrap(),
            "0 2147483647"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("ip_unprivileged_port_start")).unwrap(),
            "0"
        );
    }

    #[test]
    fn bad_keys_and_unknown_sysctls_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("net/ipv4")).unwrap();
        for (key, want) in [
            ("net.ipv4.no_such_thing", "no such sysctl"),
            ("kernel.shmmax", "not a network sysctl"),
            ("net..ipv4", "empty"),
            ("net/../../etc/passwd", "characters"),
            ("net.ipv4.a b", "characters"),
        ] {
            let e = apply(d.path(), &[(key.into(), "1".into())], Scope::Network).unwrap_err();
            assert!(matches!(e, AgentError::InvalidArgument(_)), "{key}: {e}");
            let s = e.to_string();
            assert!(s.contains(key) && s.contains(want), "{key}: {s}");
        }
        // An anchor may write any sysctl, with the same checks on the key.
        std::fs::create_dir_all(d.path().join("kernel")).unwrap();
        std::fs::write(d.path().join("kernel/shmmni"), "4096\n").unwrap();
        let set = [("kernel.shmmni".to_string(), "1234".to_string())];
        apply(d.path(), &set, Scope::Any).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("kernel/shmmni")).unwrap(),
            "1234"
        );
        for (key, want) in [("kernel/../../x", "characters"), ("kernel.nope", "no such")] {
            let e = apply(d.path(), &[(key.into(), "1".into())], Scope::Any).unwrap_err();
            assert!(e.to_string().contains(want), "{key}: {e}");
        }
    }
}
