//! A busybox OCI image built locally (no registry): one gzip layer with the static busybox and
//! a symlink per applet, a config, a manifest, `index.json` (whose entry names the image, so
//! `ctr image import` tags it) and `oci-layout`, packed as an OCI image-layout tarball.
//! Timestamps are fixed, so the same busybox gives the same digests.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;
use sha2::{Digest, Sha256};

/// The fixed mtime of every entry (2023-11-14).
const MTIME: u64 = 1_700_000_000;
/// The reference the test images are imported as.
pub const BUSYBOX_REF: &str = "localhost/busybox:test";

/// What was written.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The archive.
    pub path: PathBuf,
    /// The image reference.
    pub reference: String,
    /// The manifest digest (`sha256:...`).
    pub manifest_digest: String,
    /// The layer digest.
    pub layer_digest: String,
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn add_file<W: Write>(
    t: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut h = header(tar::EntryType::Regular, data.len() as u64, mode);
    t.append_data(&mut h, name, data)?;
    Ok(())
}

/// The applets of `busybox` as absolute paths (`/bin/sh`, `/usr/bin/env`, ...).
fn applets(busybox: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {} --list-full", busybox.display()))?;
    if !out.status.success() {
        bail!("{} --list-full failed", busybox.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|p| format!("/{}", p.trim_start_matches('/')))
        .collect())
}

/// The layer tar (uncompressed): directories, busybox, its applet links, passwd/group.
pub fn busybox_layer(busybox: &Path) -> anyhow::Result<Vec<u8>> {
    busybox_layer_with(busybox, &[])
}

/// [`busybox_layer`] plus `extra` files (path without leading `/`, content, mode).
pub fn busybox_layer_with(busybox: &Path, extra: &[(&str, &[u8], u32)]) -> anyhow::Result<Vec<u8>> {
    let binary =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let links = applets(busybox)?;
    let mut dirs: BTreeSet<String> = [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root",
        "var", "run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for l in &links {
        let mut p = Path::new(l.trim_start_matches('/')).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.display().to_string());
            p = d.parent();
        }
    }
    let mut t = tar::Builder::new(Vec::new());
    for d in &dirs {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, 0, mode);
        t.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    add_file(&mut t, "bin/busybox", &binary, 0o755)?;
    add_file(
        &mut t,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    add_file(&mut t, "etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    for (name, data, mode) in extra {
        add_file(&mut t, name, data, *mode)?;
    }
    for l in &links {
        let name = l.trim_start_matches('/');
        if name == "bin/busybox" {
            continue;
        }
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        t.append_link(&mut h, name, "/bin/busybox")?;
    }
    Ok(t.into_inner()?)
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes an OCI image-layout tarball of `layer` (uncompressed tar) named `reference`.
pub fn write_image(
    out: &Path,
    reference: &str,
    layer: &[u8],
    cmd: &[&str],
) -> anyhow::Result<ImageInfo> {
    let diff_id = digest(layer);
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(layer)?;
    let layer_gz = gz.finish()?;
    let layer_digest = digest(&layer_gz);
    let created = "2023-11-14T22:13:20Z";
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "husk-tests oci_image.rs"}]
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_gz.len()}]
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = digest(&manifest);
    let tag = reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map(|(_, t)| t)
        .unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": reference,
                            "org.opencontainers.image.ref.name": tag}
        }]
    });
    let index = serde_json::to_vec(&index)?;

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut t = tar::Builder::new(file);
    add_file(
        &mut t,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    add_file(&mut t, "index.json", &index, 0o644)?;
    for blob in [&layer_gz, &config, &manifest] {
        let name = format!(
            "blobs/sha256/{}",
            digest(blob).trim_start_matches("sha256:")
        );
        add_file(&mut t, &name, blob, 0o644)?;
    }
    t.into_inner()?.sync_all()?;
    Ok(ImageInfo {
        path: out.to_path_buf(),
        reference: reference.to_string(),
        manifest_digest,
        layer_digest,
    })
}

/// The static busybox to put in images (`HUSK_BUSYBOX`, else Debian's busybox-static).
pub fn host_busybox() -> anyhow::Result<PathBuf> {
    let candidates = [
        std::env::var_os("HUSK_BUSYBOX").map(PathBuf::from),
        Some(PathBuf::from("/bin/busybox")),
        Some(PathBuf::from("/usr/bin/busybox")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .context("no static busybox found (apt-get install busybox-static, or set HUSK_BUSYBOX)")
}

/// Builds the busybox test image at `out`.
pub fn busybox_image(out: &Path) -> anyhow::Result<ImageInfo> {
    let layer = busybox_layer(&host_busybox()?)?;
    write_image(out, BUSYBOX_REF, &layer, &["/bin/sh"])
}

/// The reference the CRI harness's pause (sandbox) image is imported as.
pub const PAUSE_REF: &str = "localhost/pause:test";

/// The pause image's entrypoint: sleeps until SIGTERM or SIGINT, then exits 0 (a shell that
/// is PID 1 of its PID namespace ignores signals it has no trap for, so the trap is needed).
const PAUSE_SCRIPT: &[u8] =
    b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n";

/// Builds the CRI sandbox image at `out`: the busybox layer plus `/pause` as its command.
pub fn pause_image(out: &Path) -> anyhow::Result<ImageInfo> {
    let layer = busybox_layer_with(&host_busybox()?, &[("pause", PAUSE_SCRIPT, 0o755)])?;
    write_image(out, PAUSE_REF, &layer, &["/pause"])
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_image_is_a_valid_layout_with_matching_digests() {
        let dir = tempfile::tempdir().unwrap();
        let layer = {
            let mut t = tar::Builder::new(Vec::new());
            add_file(&mut t, "bin/hello", b"#!/bin/sh\necho hi\n", 0o755).unwrap();
            t.into_inner().unwrap()
        };
        let out = dir.path().join("img.tar");
        let info = write_image(&out, "localhost/x:test", &layer, &["/bin/hello"]).unwrap();
        let again = write_image(
            &dir.path().join("img2.tar"),
            "localhost/x:test",
            &layer,
            &["/bin/hello"],
        )
        .unwrap();
        assert_eq!(info.manifest_digest, again.manifest_digest, "reproducible");

        let mut files = std::collections::HashMap::new();
        let mut a = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(name, data);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "localhost/x:test"
        );
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "test"
        );
        let mdig = m["digest"].as_str().unwrap();
        let manifest = &files[&format!("blobs/sha256/{}", &mdig[7..])];
        assert_eq!(digest(manifest), mdig);
        let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
        let ldig = manifest["layers"][0]["digest"].as_str().unwrap();
        let gz = &files[&format!("blobs/sha256/{}", &ldig[7..])];
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw, layer);
        let cdig = manifest["config"]["digest"].as_str().unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&files[&format!("blobs/sha256/{}", &cdig[7..])]).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(&layer));
    }

    #[test]
    fn the_busybox_layer_has_the_shell_and_links() {
        let Ok(bb) = host_busybox() else {
            panic!("busybox-static is required (scripts/install-deps.sh installs it)");
        };
        let layer = busybox_layer(&bb).unwrap();
        let mut a = tar::Archive::new(&layer[..]);
        let mut names = Vec::new();
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            names.push((e.path().unwrap().display().to_string(), link));
        }
        assert!(names.iter().any(|(n, _)| n == "bin/busybox"));
        assert!(names
            .iter()
            .any(|(n, l)| n == "bin/sh" && l.as_deref() == Some("/bin/busybox")));
        assert!(names.iter().any(|(n, _)| n == "tmp/"));
    }
}
