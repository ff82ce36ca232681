//! The contents of an image, as a sorted tree of entries, and how it is written out.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::{Compression as Level, GzBuilder};

use crate::cpio::{mode, CpioWriter, Header};

/// Directories every husk guest init expects to exist before it mounts anything.
const BASE_DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("mnt", 0o755),
    ("root", 0o700),
];

/// How the archive is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain cpio: largest, fastest for the guest to unpack.
    None,
    /// gzip (the kernel needs CONFIG_RD_GZIP).
    Gzip,
}

/// One member of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with its permission bits.
    Dir { perm: u32 },
    /// A file whose bytes are read from the host when the image is written.
    HostFile { source: PathBuf, perm: u32 },
    /// A file with the given bytes.
    Bytes { data: Vec<u8>, perm: u32 },
    /// A symbolic link.
    Symlink { target: String },
    /// A character device node.
    CharDev { major: u32, minor: u32, perm: u32 },
}

/// Why an image could not be built; each names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An input does not exist.
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    /// The init is not something the kernel can execute.
    #[error("{path}: {why}")]
    BadInit { path: PathBuf, why: String },
    /// A destination path inside the image is unusable.
    #[error("image path {0:?} must be absolute, without '..', and not the root")]
    BadDestination(String),
    /// The image would be larger than the newc format can describe.
    #[error("{0}: larger than 4 GiB, which newc cpio cannot hold")]
    TooLarge(PathBuf),
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The image being assembled. Keys are paths without the leading '/'.
#[derive(Debug, Default, Clone)]
pub struct ImageTree {
    entries: BTreeMap<String, Entry>,
}

impl ImageTree {
    /// An image with the base directories, `/dev/console`, `/dev/null` and `init` as `/init`.
    ///
    /// `init` must be an executable file; an ELF init must be statically linked, because the
    /// guest has no dynamic loader or libc.
    pub fn for_init(init: &Path) -> Result<Self, ImageError> {
        check_init(init)?;
        let mut tree = ImageTree::default();
        for (dir, perm) in BASE_DIRS {
            tree.insert(dir, Entry::Dir { perm: *perm })?;
        }
        // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
        tree.insert(
            "dev/console",
            Entry::CharDev {
                major: 5,
                minor: 1,
                perm: 0o600,
            },
        )?;
        tree.insert(
            "dev/null",
            Entry::CharDev {
                major: 1,
                minor: 3,
                perm: 0o666,
            },
        )?;
        tree.insert(
            "init",
            Entry::HostFile {
                source: init.to_path_buf(),
                perm: 0o755,
            },
        )?;
        Ok(tree)
    }

    /// Adds `entry` at `dest` (absolute or relative to the image root), creating parents.
    pub fn insert(&mut self, dest: &str, entry: Entry) -> Result<(), ImageError> {
        let key = normalise(dest)?;
        let parents: Vec<String> = Path::new(&key)
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for parent in parents {
            self.entries
                .entry(parent)
                .or_insert(Entry::Dir { perm: 0o755 });
        }
        self.entries.insert(key, entry);
        Ok(())
    }

    /// Adds a host file, symlink or directory (recursively) at `dest`, keeping permission bits.
    pub fn add_host_path(&mut self, source: &Path, dest: &str) -> Result<(), ImageError> {
        let meta = fs::symlink_metadata(source).map_err(|_| ImageError::Missing(source.into()))?;
        let perm = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(source).map_err(io_err(source))?;
            return self.insert(
                dest,
                Entry::Symlink {
                    target: target.to_string_lossy().into_owned(),
                },
            );
        }
        if meta.is_dir() {
            self.insert(dest, Entry::Dir { perm })?;
            let mut children: Vec<_> = fs::read_dir(source)
                .map_err(io_err(source))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io_err(source))?;
            children.sort();
            for name in children {
                let child_dest =
                    format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy());
                self.add_host_path(&source.join(&name), &child_dest)?;
            }
            return Ok(());
        }
        if meta.len() > u64::from(u32::MAX) {
            return Err(ImageError::TooLarge(source.into()));
        }
        self.insert(
            dest,
            Entry::HostFile {
                source: source.to_path_buf(),
                perm,
            },
        )
    }

    /// Paths in the image, in the order they are written.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive to `out` (through a temporary file, so a failed write leaves nothing
    /// half-written) and returns its size in bytes.
    pub fn write(&self, out: &Path, compression: Compression) -> Result<u64, ImageError> {
        let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
        let result = self.write_to(&tmp, compression).and_then(|()| {
            fs::rename(&tmp, out).map_err(io_err(out))?;
            Ok(fs::metadata(out).map_err(io_err(out))?.len())
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_to(&self, path: &Path, compression: Compression) -> Result<(), ImageError> {
        let file = fs::File::create(path).map_err(io_err(path))?;
        let file = BufWriter::new(file);
        match compression {
            Compression::None => {
                self.write_cpio(file, path)?
                    .into_inner()
                    .map_err(|e| io_err(path)(e.into_error()))?;
            }
            Compression::Gzip => {
                // mtime 0 and no file name keep the gzip header reproducible.
                let gz = GzBuilder::new().mtime(0).write(file, Level::default());
                let gz = self.write_cpio(gz, path)?;
                gz.finish()
                    .map_err(io_err(path))?
                    .flush()
                    .map_err(io_err(path))?;
            }
        }
        Ok(())
    }

    fn write_cpio<W: Write>(&self, out: W, path: &Path) -> Result<W, ImageError> {
        let mut cpio = CpioWriter::new(out);
        for (name, entry) in &self.entries {
            let ino = cpio.next_ino();
            let (kind, perm, nlink, rdev, data): (u32, u32, u32, (u32, u32), Vec<u8>) = match entry
            {
                Entry::Dir { perm } => (mode::DIR, *perm, 2, (0, 0), Vec::new()),
                Entry::HostFile { source, perm } => (
                    mode::FILE,
                    *perm,
                    1,
                    (0, 0),
                    fs::read(source).map_err(io_err(source))?,
                ),
                Entry::Bytes { data, perm } => (mode::FILE, *perm, 1, (0, 0), data.clone()),
                Entry::Symlink { target } => {
                    (mode::SYMLINK, 0o777, 1, (0, 0), target.as_bytes().to_vec())
                }
                Entry::CharDev { major, minor, perm } => {
                    (mode::CHAR_DEV, *perm, 1, (*major, *minor), Vec::new())
                }
            };
            let size = u32::try_from(data.len()).map_err(|_| ImageError::TooLarge(name.into()))?;
            let header = Header {
                ino,
                mode: kind | perm,
                nlink,
                size,
                rdev_major: rdev.0,
                rdev_minor: rdev.1,
            };
            cpio.write_member(name, header, &data)
                .map_err(io_err(path))?;
        }
        cpio.finish().map_err(io_err(path))
    }
}

fn normalise(dest: &str) -> Result<String, ImageError> {
    let trimmed = dest.trim_matches('/');
    let bad = trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || trimmed.contains('\0');
    if bad {
        return Err(ImageError::BadDestination(dest.to_string()));
    }
    Ok(trimmed.to_string())
}

/// Refuses an init the kernel could not run in a guest without libc.
fn check_init(init: &Path) -> Result<(), ImageError> {
    let bad = |why: &str| ImageError::BadInit {
        path: init.to_path_buf(),
        why: why.to_string(),
    };
    let meta = fs::metadata(init).map_err(|_| ImageError::Missing(init.into()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not executable (chmod +x it)"));
    }
    let bytes = fs::read(init).map_err(io_err(init))?;
    if crate::elf::has_interpreter(&bytes) {
        return Err(bad(
            "dynamically linked (it has an ELF interpreter) but the guest has no libc; \
             build it with RUSTFLAGS='-C target-feature=+crt-static'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script_init(dir: &Path) -> PathBuf {
        let init = dir.join("init");
        fs::write(&init, "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).unwrap();
        init
    }

    #[test]
    fn same_inputs_give_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let init = script_init(dir.path());
        let tree = ImageTree::for_init(&init).unwrap();
        let (a, b) = (dir.path().join("a.cpio.gz"), dir.path().join("b.cpio.gz"));
        tree.write(&a, Compression::Gzip).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        ImageTree::for_init(&init)
            .unwrap()
            .write(&b, Compression::Gzip)
            .unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    }

    #[test]
    fn parents_are_created_and_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = ImageTree::for_init(&script_init(dir.path())).unwrap();
        tree.insert(
            "/usr/lib/x/y.txt",
            Entry::Bytes {
                data: b"y".to_vec(),
                perm: 0o644,
            },
        )
        .unwrap();
        let paths: Vec<_> = tree.paths().collect();
        for p in [
            "usr",
            "usr/lib",
            "usr/lib/x",
            "usr/lib/x/y.txt",
            "init",
            "dev/console",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
    }

    #[test]
    fn bad_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = ImageTree::for_init(&missing).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("no such file"),
            "{err}"
        );

        let plain = dir.path().join("plain");
        fs::write(&plain, "x").unwrap();
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ImageTree::for_init(&plain)
            .unwrap_err()
            .to_string()
            .contains("not executable"));

        let mut tree = ImageTree::for_init(&script_init(dir.path())).unwrap();
        for dest in ["/", "a/../b", ""] {
            assert!(matches!(
                tree.insert(dest, Entry::Dir { perm: 0o755 }),
                Err(ImageError::BadDestination(_))
            ));
        }
    }

    #[test]
    fn dynamic_elf_init_is_refused() {
        // This test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        let err = ImageTree::for_init(&me).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn host_directories_are_added_recursively() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("tree");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "data").unwrap();
        std::os::unix::fs::symlink("b/f", src.join("a/link")).unwrap();
        let mut tree = ImageTree::for_init(&script_init(dir.path())).unwrap();
        tree.add_host_path(&src, "/opt/t").unwrap();
        let paths: Vec<_> = tree.paths().collect();
        assert!(
            paths.contains(&"opt/t/a/b/f") && paths.contains(&"opt/t/a/link"),
            "{paths:?}"
        );
    }
}
