//! Where `husk install` takes the files it places: `--artifacts DIR` (flat, or laid out as
//! `bin/` + `share/husk/`, as in the deploy image), or else next to the running `husk`: an
//! installed prefix (`<bindir>/../share/husk`) or the repository's build output
//! (`target/release` + `target/images`), with the guest kernel from `HUSK_KERNEL` (`make
//! kernel` prints its path).

use std::path::{Path, PathBuf};

use crate::paths::{CLI, INITRD, KERNEL, SHIM, VMM};

/// One file to place: its source, where it goes below the prefix, its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The file's name.
    pub name: &'static str,
    /// Where it is now.
    pub source: PathBuf,
    /// Relative to the prefix (`bin/...` or `share/husk/...`).
    pub dest: PathBuf,
    /// File mode.
    pub mode: u32,
}

/// Artifacts that could not be found.
#[derive(Debug, thiserror::Error)]
#[error("husk artifacts not found: {}", .0.join("; "))]
pub struct MissingArtifacts(pub Vec<String>);

/// Where to look.
#[derive(Debug, Clone)]
pub struct Sources {
    /// `--artifacts DIR`.
    pub dir: Option<PathBuf>,
    /// The running `husk` binary.
    pub exe: Option<PathBuf>,
    /// `HUSK_KERNEL`.
    pub kernel_env: Option<PathBuf>,
}

impl Sources {
    /// From the process: `--artifacts`, `current_exe`, `HUSK_KERNEL`.
    pub fn from_process(dir: Option<PathBuf>) -> Sources {
        Sources {
            dir,
            exe: std::env::current_exe().ok(),
            kernel_env: std::env::var_os("HUSK_KERNEL")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }

    fn candidates(&self, name: &str) -> Vec<PathBuf> {
        if let Some(d) = &self.dir {
            let mut c = vec![
                d.join(name),
                d.join("bin").join(name),
                d.join("share/husk").join(name),
            ];
            if name == CLI {
                c.extend(self.exe.clone());
            }
            return c;
        }
        let mut c = Vec::new();
        if name == KERNEL {
            c.extend(self.kernel_env.clone());
        }
        if name == CLI {
            c.extend(self.exe.clone());
        }
        if let Some(bindir) = self.exe.as_deref().and_then(Path::parent) {
            c.push(bindir.join(name));
            c.push(bindir.join("../share/husk").join(name));
            c.push(bindir.join("../images").join(name));
        }
        c
    }

    /// Finds every artifact, or names every missing one and where it was looked for.
    pub fn resolve(&self) -> Result<Vec<Artifact>, MissingArtifacts> {
        let wanted: [(&'static str, &str, u32, &str); 5] = [
            (SHIM, "bin", 0o755, "cargo build --release -p husk-shim"),
            (
                VMM,
                "bin",
                0o755,
                "cargo build --release -p husk-hypervisor",
            ),
            (CLI, "bin", 0o755, "cargo build --release -p husk-cli"),
            (
                KERNEL,
                "share/husk",
                0o644,
                "make kernel prints its path; set HUSK_KERNEL",
            ),
            (INITRD, "share/husk", 0o644, "make image"),
        ];
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (name, dir, mode, made_by) in wanted {
            let cands = self.candidates(name);
            match cands.iter().find(|p| p.is_file()) {
                Some(p) => found.push(Artifact {
                    name,
                    source: p.clone(),
                    dest: Path::new(dir).join(name),
                    mode,
                }),
                None => missing.push(format!(
                    "{name} (looked in {}; {made_by}, or pass --artifacts DIR)",
                    cands
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(MissingArtifacts(missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn finds_the_repository_build_output() {
        let t = tempfile::tempdir().unwrap();
        let rel = t.path().join("target/release");
        for n in [SHIM, VMM, CLI] {
            touch(&rel.join(n));
        }
        touch(&t.path().join("target/images").join(INITRD));
        touch(&t.path().join("cache/vmlinux"));
        let s = Sources {
            dir: None,
            exe: Some(rel.join(CLI)),
            kernel_env: Some(t.path().join("cache/vmlinux")),
        };
        let a = s.resolve().unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!(a[3].source, t.path().join("cache/vmlinux"));
        assert_eq!(a[3].dest, PathBuf::from("share/husk/vmlinux"));
        assert_eq!(a[0].mode, 0o755);
    }

    #[test]
    fn an_artifacts_dir_may_be_flat_or_laid_out_and_missing_ones_are_named() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join(SHIM));
        touch(&t.path().join("bin").join(VMM));
        touch(&t.path().join("share/husk").join(KERNEL));
        let s = Sources {
            dir: Some(t.path().to_path_buf()),
            exe: None,
            kernel_env: None,
        };
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("husk-initrd.img (looked in"), "{e}");
        assert!(e.contains("husk (looked in"), "{e}");
        assert!(!e.contains("vmlinux ("), "{e}");
        touch(&t.path().join(INITRD));
        touch(&t.path().join(CLI));
        assert_eq!(s.resolve().unwrap().len(), 5);
    }
}
