//! `file:///abs/path` log URIs: stdout and stderr appended to one file (created 0644 with its
//! parent directories), as containerd's `pkg/process` does for runc.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::IoError;

/// Opens `path` for appending, creating it and its directory.
pub fn open_append(path: &Path) -> Result<tokio::fs::File, IoError> {
    let fail = |source: std::io::Error| IoError::Host {
        context: format!("opening log file {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(fail)?;
    Ok(tokio::fs::File::from_std(f))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn appends_and_creates_directories() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/log.txt");
        let mut one = open_append(&p).unwrap();
        let mut two = open_append(&p).unwrap();
        one.write_all(b"out\n").await.unwrap();
        one.flush().await.unwrap();
        two.write_all(b"err\n").await.unwrap();
        two.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "out\nerr\n");
    }
}
