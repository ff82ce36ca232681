//! Small file operations install and uninstall share: atomic writes (a running shim's binary is
//! replaced by rename, never rewritten in place), comparisons, creating directories while
//! remembering which ones were new.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.husk-tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies `src` to `dst` atomically with `mode`.
pub fn copy_atomic(src: &Path, dst: &Path, mode: u32) -> std::io::Result<()> {
    let bytes = std::fs::read(src)?;
    write_atomic(dst, &bytes, mode)
}

/// True when both files exist with the same contents and `dst` has `mode`.
pub fn same_file(src: &Path, dst: &Path, mode: u32) -> std::io::Result<bool> {
    let meta = match std::fs::symlink_metadata(dst) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_file() || meta.permissions().mode() & 0o7777 != mode {
        return Ok(false);
    }
    if meta.len() != std::fs::metadata(src)?.len() {
        return Ok(false);
    }
    Ok(std::fs::read(src)? == std::fs::read(dst)?)
}

/// Creates `dir` (below the root) and its missing parents; returns the ones it created,
/// parents first, as host paths (`host` is `dir`'s host path).
pub fn create_dirs(dir: &Path, host: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let (mut d, mut h) = (dir.to_path_buf(), host.to_path_buf());
    while !d.exists() {
        missing.push((d.clone(), h.clone()));
        match (d.parent(), h.parent()) {
            (Some(pd), Some(ph)) => {
                d = pd.to_path_buf();
                h = ph.to_path_buf();
            }
            _ => break,
        }
    }
    missing.reverse();
    for (d, _) in &missing {
        std::fs::create_dir(d)?;
    }
    Ok(missing.into_iter().map(|(_, h)| h).collect())
}
