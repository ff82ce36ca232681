//! `install.json`: what `husk install` changed on the node, so `husk uninstall` undoes exactly
//! that and nothing else. Paths are host paths (the uninstalling pod may see the host under
//! another root). A second install merges into the first record: what the first added stays
//! recorded even though the second found it already there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::containerd::Version;

/// The record's format version.
pub const FORMAT: u32 = 1;

/// A containerd config edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerdEdit {
    /// The config file (host path).
    pub path: PathBuf,
    /// Its version.
    pub version: Version,
    /// Its text before install, `None` when install created the file.
    pub original: Option<String>,
    /// Its text right after install: uninstall restores `original` byte for byte when the file
    /// still reads exactly this, and removes only the husk table otherwise.
    pub installed: String,
}

/// Everything one node's installs did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The prefix.
    pub prefix: PathBuf,
    /// Directories install created, parents first (removed on uninstall when empty).
    pub dirs: Vec<PathBuf>,
    /// Files install created (artifacts, this record excluded).
    pub files: Vec<PathBuf>,
    /// The shim link install created on containerd's PATH.
    pub link: Option<PathBuf>,
    /// The husk config install wrote (it did not exist).
    pub husk_config: Option<PathBuf>,
    /// The containerd handler install added or replaced.
    pub containerd: Option<ContainerdEdit>,
    /// The node install labelled.
    pub node_label: Option<String>,
}

/// An unreadable record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing.
    #[error("install record {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a record.
    #[error("install record {path} is not valid: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl InstallRecord {
    /// An empty record for `prefix`.
    pub fn new(prefix: &Path) -> InstallRecord {
        InstallRecord {
            format: FORMAT,
            prefix: prefix.to_path_buf(),
            ..InstallRecord::default()
        }
    }

    /// Reads the record at `file` (a path below the root), `None` if there is none.
    pub fn load(file: &Path) -> Result<Option<InstallRecord>, RecordError> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Io {
                    path: file.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RecordError::Json {
                path: file.to_path_buf(),
                source,
            })
    }

    /// Writes the record to `file` (a path below the root).
    pub fn save(&self, file: &Path) -> Result<(), RecordError> {
        let io = |source| RecordError::Io {
            path: file.to_path_buf(),
            source,
        };
        let text = serde_json::to_string_pretty(self).expect("a record serializes");
        crate::fsops::write_atomic(file, format!("{text}\n").as_bytes(), 0o644).map_err(io)
    }

    /// True when the record says install changed nothing.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
            && self.files.is_empty()
            && self.link.is_none()
            && self.husk_config.is_none()
            && self.containerd.is_none()
            && self.node_label.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("install.json");
        assert_eq!(InstallRecord::load(&f).unwrap(), None);
        let mut r = InstallRecord::new(Path::new("/opt/husk"));
        r.files.push("/opt/husk/bin/husk".into());
        r.containerd = Some(ContainerdEdit {
            path: "/etc/containerd/config.toml".into(),
            version: Version::V2,
            original: Some("version = 2\n".into()),
            installed: "version = 2\n[x]\n".into(),
        });
        r.save(&f).unwrap();
        assert_eq!(InstallRecord::load(&f).unwrap(), Some(r));
        std::fs::write(&f, "{").unwrap();
        let e = InstallRecord::load(&f).unwrap_err().to_string();
        assert!(e.contains("is not valid"), "{e}");
    }
}
