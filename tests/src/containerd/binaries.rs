//! Which containerd the harness runs. `HUSK_CONTAINERD_BIN` names a directory holding one
//! release's `containerd`, `ctr` and `containerd-shim-runc-v2` (the upstream builds in
//! `../shared/containerd/<tag>/bin`); unset or empty, the host's containerd on `PATH` (Debian's
//! 1.6.20 here). The directory goes first in the `PATH` containerd hands its shims, so the runc
//! shim of the same release is the one that runs.
//!
//! The release decides the config containerd is given: version 2 for 1.x, version 3 with CRI's
//! split plugins (`io.containerd.cri.v1.runtime`, `io.containerd.cri.v1.images`) for 2.x.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// The containerd release the harness drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `containerd`'s directory; `None` is the host's containerd on `PATH`.
    pub dir: Option<PathBuf>,
    /// Major version (1 or 2).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// The version as `containerd --version` prints it (`v2.3.4`, `1.6.20~ds1`).
    pub version: String,
}

impl Release {
    /// The release `HUSK_CONTAINERD_BIN` names (or the host's), asked once per process and
    /// announced on stderr, so every test log names the containerd it ran against.
    pub fn current() -> anyhow::Result<&'static Release> {
        static CURRENT: OnceLock<Result<Release, String>> = OnceLock::new();
        let r = CURRENT.get_or_init(|| {
            let dir = std::env::var_os("HUSK_CONTAINERD_BIN")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            let r = Release::probe(dir).map_err(|e| format!("{e:#}"))?;
            eprintln!(
                "harness: containerd {} ({})",
                r.version,
                r.containerd().display()
            );
            Ok(r)
        });
        r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Runs `containerd --version` from `dir` (or `PATH`) and parses it.
    pub fn probe(dir: Option<PathBuf>) -> anyhow::Result<Release> {
        if let Some(d) = &dir {
            for b in ["containerd", "ctr"] {
                if !d.join(b).is_file() {
                    bail!(
                        "HUSK_CONTAINERD_BIN={}: no `{b}` there (it must hold containerd, ctr and \
                         containerd-shim-runc-v2 of one release)",
                        d.display()
                    );
                }
            }
        }
        let bin = Release::binary(dir.as_deref(), "containerd");
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", bin.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (major, minor, version) = parse_version(&text)
            .with_context(|| format!("no version in `{} --version`: {text:?}", bin.display()))?;
        Ok(Release {
            dir,
            major,
            minor,
            version,
        })
    }

    fn binary(dir: Option<&Path>, name: &str) -> PathBuf {
        match dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The `containerd` binary.
    pub fn containerd(&self) -> PathBuf {
        Release::binary(self.dir.as_deref(), "containerd")
    }

    /// The `ctr` binary.
    pub fn ctr(&self) -> PathBuf {
        Release::binary(self.dir.as_deref(), "ctr")
    }

    /// The `PATH` containerd runs with: the release's directory first.
    pub fn path_env(&self) -> OsString {
        let host =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        match &self.dir {
            Some(d) => {
                let mut p = d.clone().into_os_string();
                p.push(":");
                p.push(host);
                p
            }
            None => host,
        }
    }

    /// Whether this is containerd 2.x (config version 3, CRI's split plugins).
    pub fn is_v2(&self) -> bool {
        self.major >= 2
    }
}

/// `(major, minor, version)` from `containerd --version`:
/// `containerd github.com/containerd/containerd/v2 v2.3.4 <revision>` or Debian's
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`.
fn parse_version(text: &str) -> Option<(u32, u32, String)> {
    let version = text.split_whitespace().nth(2)?;
    let mut nums = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let major = nums.next()?.ok()?;
    let minor = nums.next()?.ok()?;
    Some((major, minor, version.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_and_debian_versions_parse() {
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd/v2 v2.3.4 db88095\n"),
            Some((2, 3, "v2.3.4".to_string()))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd v1.7.34 fb9028b\n"),
            Some((1, 7, "v1.7.34".to_string()))
        );
        assert_eq!(
            parse_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"
            ),
            Some((1, 6, "1.6.20~ds1".to_string()))
        );
        assert_eq!(parse_version("containerd\n"), None);
        assert_eq!(parse_version("containerd x vX.Y\n"), None);
    }

    #[test]
    fn a_directory_without_the_binaries_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let err = Release::probe(Some(d.path().to_path_buf())).unwrap_err();
        assert!(err.to_string().contains("no `containerd` there"), "{err:#}");
    }

    #[test]
    fn the_release_directory_comes_first_in_path() {
        let r = Release {
            dir: Some(PathBuf::from("/opt/c/bin")),
            major: 2,
            minor: 3,
            version: "v2.3.4".into(),
        };
        assert!(r.path_env().to_string_lossy().starts_with("/opt/c/bin:"));
        assert_eq!(r.ctr(), PathBuf::from("/opt/c/bin/ctr"));
        assert!(r.is_v2());
    }
}
