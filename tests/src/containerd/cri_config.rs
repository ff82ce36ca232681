//! The CRI side of the private containerd: the CRI plugins' config (sandbox image, stream server
//! on loopback, runtimes `runc` and `husk`, CNI), as containerd 1.x's one `io.containerd.grpc.v1.cri`
//! section or 2.x's split `io.containerd.cri.v1.images` / `io.containerd.cri.v1.runtime` /
//! `io.containerd.grpc.v1.cri` sections, and the CNI network: a bridge of its own on a private
//! subnet, host-local IPAM with its state under the harness directory.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::Release;
use crate::oci_image::PAUSE_REF;

/// The containerd namespace CRI keeps its objects in.
pub const NAMESPACE: &str = "k8s.io";

/// The CRI runtime handler that runs husk through containerd 2.x's sandbox API
/// (`sandboxer = "shim"`); only in the 2.x config.
pub const SANDBOX_API_HANDLER: &str = "husk-sandbox";

/// The CNI bridge the harness's pods attach to (not the name any other harness uses).
pub const BRIDGE: &str = "hcri0";
/// The pods' subnet; the bridge (the pods' gateway) is `.1`.
pub const SUBNET: &str = "10.231.0.0/24";
/// The bridge's address on the host.
pub const GATEWAY: &str = "10.231.0.1";
/// The CNI plugin binaries (Debian's containernetworking-plugins).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The CNI network list: bridge (gateway, no masquerade) + host-local IPAM.
pub fn conflist(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "husk-cri-test",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir.display().to_string(),
            }
        }]
    })
    .to_string()
}

/// The CRI plugin's config section (containerd 1.x, config version 2) for a containerd whose
/// directory is `base`.
pub fn cri_section(base: &Path, husk_config: &Path) -> String {
    let b = base.display();
    let hc = husk_config.display();
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_REF}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
      pod_annotations = ["io.husk.*"]
      privileged_without_host_devices = true
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk.options]
        ConfigPath = "{hc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{b}/cni/net.d"
    max_conf_num = 1
"#
    )
}

/// The CRI plugins' config sections (containerd 2.x, config version 3) for a containerd whose
/// directory is `base`: the same settings as [`cri_section`], where 2.x keeps them.
pub fn cri_sections_v3(base: &Path, husk_config: &Path) -> String {
    let b = base.display();
    let hc = husk_config.display();
    let rt = "plugins.\"io.containerd.cri.v1.runtime\"";
    format!(
        r#"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_REF}"

[{rt}]
  disable_apparmor = true
  enable_selinux = false
  [{rt}.containerd]
    default_runtime_name = "runc"
    [{rt}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [{rt}.containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
      pod_annotations = ["io.husk.*"]
      privileged_without_host_devices = true
      [{rt}.containerd.runtimes.husk.options]
        ConfigPath = "{hc}"
    # The same runtime through containerd 2.x's sandbox API: the pod sandbox is the VM, no
    # pause container. Runtime options do not reach CreateSandbox, so the shim reads the husk
    # config from HUSK_CONFIG (containerd's environment here; /etc/husk/config.toml on a node).
    [{rt}.containerd.runtimes.{SANDBOX_API_HANDLER}]
      runtime_type = "io.containerd.husk.v2"
      sandboxer = "shim"
      pod_annotations = ["io.husk.*"]
      privileged_without_host_devices = true
  [{rt}.cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{b}/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#
    )
}

/// Writes the CNI config under `base` and returns the CRI section(s) of containerd's config in
/// the syntax of `release`.
pub fn prepare(base: &Path, husk_config: &Path, release: &Release) -> anyhow::Result<String> {
    let net_d = base.join("cni/net.d");
    std::fs::create_dir_all(&net_d).context("creating the CNI config directory")?;
    std::fs::write(
        net_d.join("10-husk-cri.conflist"),
        conflist(&base.join("cni/ipam")),
    )?;
    Ok(if release.is_v2() {
        cri_sections_v3(base, husk_config)
    } else {
        cri_section(base, husk_config)
    })
}

/// Removes what CNI leaves on the host after the last pod: the bridge (best effort).
pub fn teardown(_base: &Path) {
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(std::process::Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_names_the_bridge_subnet_and_ipam_dir() {
        let v: serde_json::Value =
            serde_json::from_str(&conflist(Path::new("/run/hct-x/cni/ipam"))).unwrap();
        let p = &v["plugins"][0];
        assert_eq!(p["bridge"], BRIDGE);
        assert_eq!(p["isGateway"], true);
        assert_eq!(p["ipMasq"], false);
        assert_eq!(p["ipam"]["ranges"][0][0]["subnet"], SUBNET);
        assert_eq!(p["ipam"]["dataDir"], "/run/hct-x/cni/ipam");
    }

    #[test]
    fn the_cri_section_has_both_runtimes_and_the_husk_config() {
        let s = cri_section(Path::new("/run/hct-x"), Path::new("/run/hct-x/husk.toml"));
        assert!(s.contains("runtimes.husk]\n      runtime_type = \"io.containerd.husk.v2\""));
        assert!(s.contains("ConfigPath = \"/run/hct-x/husk.toml\""), "{s}");
        assert!(s.contains("pod_annotations = [\"io.husk.*\"]"), "{s}");
        assert!(s.contains("conf_dir = \"/run/hct-x/cni/net.d\""), "{s}");
        assert!(
            s.contains(&format!("sandbox_image = \"{PAUSE_REF}\"")),
            "{s}"
        );
    }

    #[test]
    fn the_v3_sections_keep_the_same_settings_where_containerd_2_reads_them() {
        let s = cri_sections_v3(Path::new("/run/hct-x"), Path::new("/run/hct-x/husk.toml"));
        let v: toml::Value = toml::from_str(&s).expect("valid TOML");
        let p = &v["plugins"];
        assert_eq!(
            p["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some(PAUSE_REF)
        );
        let rt = &p["io.containerd.cri.v1.runtime"];
        let husk = &rt["containerd"]["runtimes"]["husk"];
        assert_eq!(husk["runtime_type"].as_str(), Some("io.containerd.husk.v2"));
        assert_eq!(
            husk["options"]["ConfigPath"].as_str(),
            Some("/run/hct-x/husk.toml")
        );
        assert_eq!(husk["pod_annotations"][0].as_str(), Some("io.husk.*"));
        assert_eq!(rt["cni"]["bin_dirs"][0].as_str(), Some(CNI_BIN_DIR));
        assert_eq!(rt["cni"]["conf_dir"].as_str(), Some("/run/hct-x/cni/net.d"));
        assert_eq!(
            p["io.containerd.grpc.v1.cri"]["stream_server_address"].as_str(),
            Some("127.0.0.1")
        );
    }
}
