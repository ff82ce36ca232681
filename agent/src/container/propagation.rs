//! `linux.rootfsPropagation` in the words libcontainer takes.
//!
//! The OCI spec allows runc's names, and containerd's CRI plugin writes the recursive ones:
//! `rslave` for a container with a `HostToContainer` mount, `rshared` for a `Bidirectional`
//! one. libcontainer knows only `shared`, `private`, `slave` and `unbindable`, and refuses the
//! rest ("failed to prepare rootfs"). Its first step already applies the propagation to the
//! whole mount tree (`MS_REC`), as runc does for the `r` names, so `rX` becomes `X`. Its second
//! step marks the container's root mount `shared` or `unbindable` without `MS_REC`; runc's is
//! recursive. Inside a VM that difference does not reach the host: nothing the container mounts
//! can propagate out of the guest (docs/shim.md, "Rootfs over virtio-fs").

use oci_spec::runtime::Linux;

use crate::error::{AgentError, Result};

/// The propagation names libcontainer takes, for each name the spec may carry.
fn libcontainer_name(spec: &str) -> Option<&'static str> {
    Some(match spec {
        "shared" | "rshared" => "shared",
        "slave" | "rslave" => "slave",
        "private" | "rprivate" => "private",
        "unbindable" | "runbindable" => "unbindable",
        _ => return None,
    })
}

/// Rewrites `linux.rootfsPropagation` for libcontainer; an empty one is unset (the default,
/// `slave`), an unknown one is refused by name.
pub fn normalize(linux: &mut Linux) -> Result<()> {
    let Some(given) = linux.rootfs_propagation().clone() else {
        return Ok(());
    };
    if given.is_empty() {
        linux.set_rootfs_propagation(None);
        return Ok(());
    }
    let name = libcontainer_name(&given).ok_or_else(|| {
        AgentError::InvalidArgument(format!(
            "linux.rootfsPropagation {given:?} is not one of shared, slave, private, unbindable \
             (or their r-prefixed recursive forms)"
        ))
    })?;
    linux.set_rootfs_propagation(Some(name.to_string()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(p: Option<&str>) -> Linux {
        let mut l = Linux::default();
        l.set_rootfs_propagation(p.map(str::to_string));
        l
    }

    #[test]
    fn the_recursive_names_cri_writes_become_libcontainers() {
        for (given, want) in [
            ("rslave", "slave"),
            ("rshared", "shared"),
            ("rprivate", "private"),
            ("runbindable", "unbindable"),
            ("slave", "slave"),
            ("shared", "shared"),
        ] {
            let mut l = with(Some(given));
            normalize(&mut l).unwrap();
            assert_eq!(l.rootfs_propagation().as_deref(), Some(want), "{given}");
        }
    }

    #[test]
    fn empty_is_the_default_and_unknown_is_refused_by_name() {
        let mut l = with(Some(""));
        normalize(&mut l).unwrap();
        assert_eq!(l.rootfs_propagation(), &None);
        let mut l = with(None);
        normalize(&mut l).unwrap();
        assert_eq!(l.rootfs_propagation(), &None);
        let err = normalize(&mut with(Some("rsideways")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux.rootfsPropagation") && err.contains("rsideways"),
            "{err}"
        );
    }
}
