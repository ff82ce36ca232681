//! The private containerd's config file, in the version its release reads: 2 for containerd
//! 1.x, 3 for 2.x (which migrates 3 to its own newer versions in memory). Without CRI, every
//! CRI plugin is disabled (1.x has one, `io.containerd.grpc.v1.cri`; 2.x splits it into the
//! runtime, images and gRPC plugins). On 2.x, NRI (on by default there, with a socket at a fixed
//! path that two instances would share) is off.

use std::path::Path;

use super::Release;

/// The plugins a harness containerd never loads: the snapshotters it does not use, and the CRI
/// plugins when `cri` is off.
fn disabled_plugins(cri: bool, release: &Release) -> String {
    let mut off: Vec<&str> = Vec::new();
    if !cri {
        off.push("io.containerd.grpc.v1.cri");
        if release.is_v2() {
            off.extend([
                "io.containerd.cri.v1.runtime",
                "io.containerd.cri.v1.images",
                "io.containerd.podsandbox.controller.v1.podsandbox",
            ]);
        }
    }
    off.extend([
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.devmapper",
    ]);
    off.iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// containerd's config for a harness directory `base`; `cri` is the CRI plugins' section in the
/// release's syntax ([`crate::containerd::cri_config::prepare`]), none for a containerd without CRI.
pub fn containerd_config(base: &Path, cri: Option<&str>, release: &Release) -> String {
    let b = base.display();
    let version = if release.is_v2() { 3 } else { 2 };
    let disabled = disabled_plugins(cri.is_some(), release);
    let nri = if release.is_v2() {
        "\n[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n"
    } else {
        ""
    };
    let cri = cri.unwrap_or_default();
    format!(
        r#"version = {version}
root = "{b}/root"
state = "{b}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{b}/containerd.sock"

[ttrpc]
  address = "{b}/containerd.sock.ttrpc"

[debug]
  address = "{b}/debug.sock"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"
{nri}{cri}"#
    )
}

/// A release's stock config (`containerd config default`) moved into the harness directory
/// `base`, and nothing else changed: root, state and the sockets, the opt directory (whose
/// `bin/` is on the shims' PATH), the drop-in directory it imports, CNI (Debian's plugins, a
/// config directory under `base`), and the sandbox image (the locally built pause).
pub fn localize_stock(stock: &str, base: &Path) -> String {
    let b = base.display().to_string();
    let moved = stock
        .replace(
            "/run/containerd/containerd.sock",
            &format!("{b}/containerd.sock"),
        )
        .replace("/run/containerd", &format!("{b}/state"))
        .replace("/var/lib/containerd", &format!("{b}/root"))
        .replace("/opt/containerd", &format!("{b}/opt"))
        .replace("/etc/containerd/conf.d", &format!("{b}/conf.d"))
        .replace("/opt/cni/bin", crate::containerd::cri_config::CNI_BIN_DIR)
        .replace("/etc/cni/net.d", &format!("{b}/cni/net.d"));
    let mut out = String::with_capacity(moved.len());
    for line in moved.lines() {
        let key = line.trim_start();
        if key.starts_with("sandbox_image =") || key.starts_with("sandbox =") {
            let indent = &line[..line.len() - key.len()];
            let k = key.split('=').next().unwrap_or_default().trim();
            out.push_str(&format!(
                "{indent}{k} = \"{}\"",
                crate::oci_image::PAUSE_REF
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(major: u32) -> Release {
        Release {
            dir: None,
            major,
            minor: 0,
            version: format!("{major}.0"),
        }
    }

    #[test]
    fn containerd_1_gets_version_2_and_one_cri_plugin_to_disable() {
        let s = containerd_config(Path::new("/run/hct-x"), None, &release(1));
        assert!(s.starts_with("version = 2\n"), "{s}");
        assert!(s.contains("\"io.containerd.grpc.v1.cri\", "), "{s}");
        assert!(!s.contains("cri.v1.runtime"), "{s}");
        assert!(!s.contains("nri"), "{s}");
        assert!(
            s.contains("address = \"/run/hct-x/containerd.sock\""),
            "{s}"
        );
    }

    #[test]
    fn containerd_2_gets_version_3_its_split_cri_plugins_and_no_nri() {
        let s = containerd_config(Path::new("/run/hct-x"), None, &release(2));
        assert!(s.starts_with("version = 3\n"), "{s}");
        for p in [
            "io.containerd.grpc.v1.cri",
            "io.containerd.cri.v1.runtime",
            "io.containerd.cri.v1.images",
        ] {
            assert!(s.contains(&format!("\"{p}\"")), "{p} not disabled: {s}");
        }
        assert!(
            s.contains("[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true"),
            "{s}"
        );
    }

    #[test]
    fn with_cri_nothing_of_cri_is_disabled_and_the_section_is_appended() {
        let s = containerd_config(Path::new("/b"), Some("\n[cri-section]\n"), &release(2));
        assert!(!s.contains("cri.v1"), "{s}");
        assert!(!s.contains("grpc.v1.cri"), "{s}");
        assert!(s.ends_with("[cri-section]\n"), "{s}");
    }

    #[test]
    fn a_stock_config_moves_into_the_harness_directory() {
        let stock = "version = 4\nroot = '/var/lib/containerd'\nstate = '/run/containerd'\n\
            imports = ['/etc/containerd/conf.d/*.toml']\n[grpc]\n  address = '/run/containerd/containerd.sock'\n\
            [ttrpc]\n  address = '/run/containerd/containerd.sock.ttrpc'\n\
            [plugins.'io.containerd.cri.v1.images'.pinned_images]\n      sandbox = 'registry.k8s.io/pause:3.10.2'\n\
            [plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = ['/opt/cni/bin']\n  conf_dir = '/etc/cni/net.d'\n\
            [plugins.'io.containerd.internal.v1.opt']\n  path = '/opt/containerd'\n";
        let s = localize_stock(stock, Path::new("/run/hct-s"));
        let v: toml::Value = toml::from_str(&s).expect("still TOML");
        assert_eq!(v["root"].as_str(), Some("/run/hct-s/root"));
        assert_eq!(v["state"].as_str(), Some("/run/hct-s/state"));
        assert_eq!(v["imports"][0].as_str(), Some("/run/hct-s/conf.d/*.toml"));
        assert_eq!(
            v["grpc"]["address"].as_str(),
            Some("/run/hct-s/containerd.sock")
        );
        assert_eq!(
            v["ttrpc"]["address"].as_str(),
            Some("/run/hct-s/containerd.sock.ttrpc")
        );
        let p = &v["plugins"];
        assert_eq!(
            p["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some(crate::oci_image::PAUSE_REF)
        );
        let cni = &p["io.containerd.cri.v1.runtime"]["cni"];
        assert_eq!(
            cni["bin_dirs"][0].as_str(),
            Some(crate::containerd::cri_config::CNI_BIN_DIR)
        );
        assert_eq!(cni["conf_dir"].as_str(), Some("/run/hct-s/cni/net.d"));
        assert_eq!(
            p["io.containerd.internal.v1.opt"]["path"].as_str(),
            Some("/run/hct-s/opt")
        );
    }
}
