//! The pod's `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`. Under the podsandbox
//! sandboxer CRI writes them and bind-mounts them into every container; under the sandbox API
//! it leaves that to the sandbox, so the shim writes them (as CRI would: the node's hosts file,
//! resolv.conf from the pod's DNS config or else the node's) into the sandbox state directory
//! and adds the same bind mounts to each container's spec that does not mount them itself.

use std::path::{Path, PathBuf};

use crate::pod_config::{Dns, PodConfig};

/// The files, by the guest path they are mounted on.
pub const FILES: [(&str, &str); 3] = [
    ("/etc/hostname", "hostname"),
    ("/etc/hosts", "hosts"),
    ("/etc/resolv.conf", "resolv.conf"),
];

/// Where the files live under the sandbox state directory.
pub fn dir(state_root: &Path) -> PathBuf {
    state_root.join("etc")
}

/// resolv.conf from a DNS config (CRI's format), or `None` when it says nothing.
pub fn resolv_conf(dns: &Dns) -> Option<String> {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    (!s.is_empty()).then_some(s)
}

/// Writes the three files for `pod` under `state_root`; `hostname` is the pod's (or the
/// node's when the pod names none).
pub fn write(state_root: &Path, pod: &PodConfig, hostname: &str) -> std::io::Result<()> {
    let dir = dir(state_root);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    let hosts = std::fs::read("/etc/hosts").unwrap_or_default();
    std::fs::write(dir.join("hosts"), hosts)?;
    let resolv = match pod.dns.as_ref().and_then(resolv_conf) {
        Some(r) => r.into_bytes(),
        None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    std::fs::write(dir.join("resolv.conf"), resolv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_follows_cri() {
        let dns = Dns {
            servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            searches: vec!["a.svc".into(), "svc".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "search a.svc svc\nnameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&Dns::default()), None);
    }

    #[test]
    fn the_files_are_written() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodConfig {
            dns: Some(Dns {
                servers: vec!["1.1.1.1".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        write(d.path(), &pod, "web-0").unwrap();
        let etc = dir(d.path());
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "web-0\n"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "nameserver 1.1.1.1\n"
        );
        assert!(etc.join("hosts").exists());
    }
}
