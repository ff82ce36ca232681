//! VM templates on a node: a guest booted to an idle agent and snapshotted, which pods of the
//! same shape restore instead of booting (see the shim's `template` module).
//!
//! A template is the directory `<template_dir>/<key>` holding husk-vmm's snapshot files
//! (`state`, `memory`) and `template.json` ([`TemplateMeta`]): the [`TemplateShape`] it was
//! made for and when. The key names the directory; the whole shape decides whether a template
//! fits a pod ([`lookup`]), so two shapes whose keys collided could never restore each other's
//! guest. Directories are made under a temporary name and renamed into place ([`install`]), so
//! a template is either complete or absent; anything else in the directory (a build cut short)
//! is found and removed by [`list`] and [`remove`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// The metadata file in a template directory.
pub const META_FILE: &str = "template.json";
/// husk-vmm's snapshot state file.
pub const STATE_FILE: &str = "state";
/// husk-vmm's snapshot memory file.
pub const MEMORY_FILE: &str = "memory";
/// The kernel command-line word that tells the agent its guest will be a template.
pub const TEMPLATE_CMDLINE: &str = "husk.template";

/// The MAC of a template's `n`th NIC: locally administered and unicast, `02:68:75:73:6b:nn`
/// ("husk"). Every pod restored from a template gives each NIC its own MAC before the link
/// comes up (SetupSandbox's `Interface.current_mac`), so this one never reaches a network.
pub fn nic_mac(n: u8) -> String {
    format!("02:68:75:73:6b:{n:02x}")
}

/// One input file of a template, identified without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
}

impl FileId {
    /// `path`'s identity now.
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mtime_ns = meta
            .modified()?
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(FileId {
            path: path.to_path_buf(),
            len: meta.len(),
            mtime_ns,
        })
    }
}

/// Everything that shapes a template's guest: a pod restores a template only if its VM would
/// have exactly this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateShape {
    /// The husk that made it.
    pub husk_version: String,
    /// The husk-vmm binary.
    pub vmm: FileId,
    /// The guest kernel.
    pub kernel: FileId,
    /// The guest image.
    pub initramfs: FileId,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// The extra kernel command line.
    pub extra_cmdline: String,
    /// virtio-net devices.
    pub nics: u8,
    /// Whether the VM has a balloon.
    pub balloon: bool,
}

impl TemplateShape {
    /// The directory name: 16 hex digits of FNV-1a over the shape.
    pub fn key(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// `template.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    /// What it was made for.
    pub shape: TemplateShape,
    /// When it was made, seconds since the epoch.
    pub created_unix: u64,
    /// Bytes of guest RAM in the memory file (the rest are holes).
    pub memory_bytes: u64,
    /// How long making it took, in milliseconds.
    pub build_ms: u64,
}

/// Whether `key` can name a template directory (16 lowercase hex digits).
pub fn is_key(key: &str) -> bool {
    key.len() == 16
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What [`lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A complete template of this shape.
    Ready(PathBuf),
    /// None was made yet.
    Missing,
    /// One is there and cannot be used (why); restoring it would fail or restore another guest.
    Unusable(PathBuf, String),
}

/// Reads a template directory's metadata and checks its files.
pub fn read(dir: &Path) -> Result<TemplateMeta, String> {
    let meta_path = dir.join(META_FILE);
    let text =
        std::fs::read_to_string(&meta_path).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let meta: TemplateMeta =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", meta_path.display()))?;
    let memory = dir.join(MEMORY_FILE);
    let len = std::fs::metadata(&memory)
        .map_err(|e| format!("{}: {e}", memory.display()))?
        .len();
    if len < u64::from(meta.shape.memory_mib) << 20 {
        return Err(format!(
            "{} holds {len} bytes, less than the guest's {} MiB",
            memory.display(),
            meta.shape.memory_mib
        ));
    }
    let state = dir.join(STATE_FILE);
    if std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(format!("{} is missing or empty", state.display()));
    }
    Ok(meta)
}

/// The template for `shape` under `root`, if a usable one is there.
pub fn lookup(root: &Path, shape: &TemplateShape) -> Lookup {
    let dir = root.join(shape.key());
    if !dir.exists() {
        return Lookup::Missing;
    }
    match read(&dir) {
        Ok(meta) if meta.shape == *shape => Lookup::Ready(dir),
        Ok(_) => Lookup::Unusable(
            dir,
            "it was made for another shape (a key collision)".into(),
        ),
        Err(why) => Lookup::Unusable(dir, why),
    }
}

/// Moves the finished template `tmp` to its place under `root`; `false` when another one of
/// the same key got there first (then `tmp` is removed).
pub fn install(root: &Path, tmp: &Path, key: &str) -> io::Result<bool> {
    let dir = root.join(key);
    match std::fs::rename(tmp, &dir) {
        Ok(()) => {
            std::fs::File::open(root)?.sync_all()?;
            Ok(true)
        }
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(tmp);
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One entry of [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The directory's name.
    pub name: String,
    /// Its metadata, or why it is not a usable template (a build cut short, a corrupt file).
    pub meta: Result<TemplateMeta, String>,
}

/// Every entry of `root`, templates and leftovers alike (none if `root` does not exist).
pub fn list(root: &Path) -> io::Result<Vec<Listed>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = if is_key(&name) {
            read(&entry.path())
        } else {
            Err("not a template (a build that did not finish)".into())
        };
        out.push(Listed { name, meta });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes entry `name` of `root` (a template or a leftover); the name must be a plain file
/// name.
pub fn remove(root: &Path, name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a template name"),
        ));
    }
    std::fs::remove_dir_all(root.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(dir: &Path) -> TemplateShape {
        let f = dir.join("k");
        std::fs::write(&f, b"kernel").unwrap();
        let id = FileId::of(&f).unwrap();
        TemplateShape {
            husk_version: "husk 0.1.0".into(),
            vmm: id.clone(),
            kernel: id.clone(),
            initramfs: id,
            vcpus: 1,
            memory_mib: 64,
            extra_cmdline: "quiet".into(),
            nics: 0,
            balloon: true,
        }
    }

    fn make(root: &Path, shape: &TemplateShape, memory: u64) -> PathBuf {
        let tmp = root.join(".building");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join(STATE_FILE), b"HUSKSNAP").unwrap();
        std::fs::File::create(tmp.join(MEMORY_FILE))
            .unwrap()
            .set_len(memory)
            .unwrap();
        let meta = TemplateMeta {
            shape: shape.clone(),
            created_unix: 1,
            memory_bytes: 0,
            build_ms: 0,
        };
        std::fs::write(tmp.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        assert!(install(root, &tmp, &shape.key()).unwrap());
        root.join(shape.key())
    }

    #[test]
    fn a_complete_template_is_found_by_its_whole_shape() {
        let t = tempfile::tempdir().unwrap();
        let s = shape(t.path());
        assert!(is_key(&s.key()));
        assert_eq!(lookup(t.path(), &s), Lookup::Missing);
        let dir = make(t.path(), &s, 64 << 20);
        assert_eq!(lookup(t.path(), &s), Lookup::Ready(dir));
        let mut bigger = s.clone();
        bigger.memory_mib = 128;
        assert_ne!(bigger.key(), s.key());
        assert_eq!(lookup(t.path(), &bigger), Lookup::Missing);
    }

    #[test]
    fn a_changed_kernel_makes_another_key() {
        let t = tempfile::tempdir().unwrap();
        let s = shape(t.path());
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(t.path().join("k"), b"kernel, rebuilt").unwrap();
        let mut rebuilt = s.clone();
        rebuilt.kernel = FileId::of(&t.path().join("k")).unwrap();
        assert_ne!(rebuilt.key(), s.key());
    }

    #[test]
    fn short_memory_missing_state_and_foreign_shapes_are_unusable() {
        let t = tempfile::tempdir().unwrap();
        let s = shape(t.path());
        let dir = make(t.path(), &s, 1 << 20);
        match lookup(t.path(), &s) {
            Lookup::Unusable(d, why) => {
                assert_eq!(d, dir);
                assert!(why.contains("less than the guest's 64 MiB"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::File::create(dir.join(MEMORY_FILE))
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
        assert!(matches!(lookup(t.path(), &s), Lookup::Unusable(_, w) if w.contains("state")));
        std::fs::write(dir.join(STATE_FILE), b"x").unwrap();
        std::fs::write(dir.join(META_FILE), b"{not json").unwrap();
        assert!(
            matches!(lookup(t.path(), &s), Lookup::Unusable(_, w) if w.contains("template.json"))
        );
    }

    #[test]
    fn list_shows_templates_and_leftovers_and_remove_takes_plain_names_only() {
        let t = tempfile::tempdir().unwrap();
        let s = shape(t.path());
        make(t.path(), &s, 64 << 20);
        std::fs::create_dir(t.path().join(".building-x-1")).unwrap();
        std::fs::remove_file(t.path().join("k")).unwrap();
        let l = list(t.path()).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[0].name.starts_with(".building") && l[0].meta.is_err());
        assert_eq!(l[1].name, s.key());
        assert_eq!(l[1].meta.as_ref().unwrap().shape, s);
        assert!(remove(t.path(), "../etc").is_err());
        remove(t.path(), &s.key()).unwrap();
        assert_eq!(list(t.path()).unwrap().len(), 1);
        assert!(list(&t.path().join("nothing")).unwrap().is_empty());
    }

    #[test]
    fn a_second_install_of_one_key_keeps_the_first() {
        let t = tempfile::tempdir().unwrap();
        let s = shape(t.path());
        make(t.path(), &s, 64 << 20);
        let tmp = t.path().join(".building-2");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("x"), b"y").unwrap();
        assert!(!install(t.path(), &tmp, &s.key()).unwrap());
        assert!(!tmp.exists(), "the loser is removed");
        assert!(matches!(lookup(t.path(), &s), Lookup::Ready(_)));
    }
}
