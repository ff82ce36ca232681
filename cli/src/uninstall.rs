//! `husk uninstall`: undoes what the install record says install did, and nothing else.
//!
//! containerd's config returns byte for byte to its text before install when it still reads
//! exactly as install left it; if someone edited it since, only the `husk` table is removed
//! (their edits stay). The husk config is removed only if it is unchanged, the shim link only
//! if it still points at this prefix, directories only if empty. The node label goes first, so
//! the scheduler stops sending husk pods before the runtime disappears.

use std::path::{Path, PathBuf};

use crate::commands::{self, CommandError, Runner};
use crate::containerd::{self, ContainerdConfigError};
use crate::fsops;
use crate::husk_config::husk_config_text;
use crate::paths::{Layout, Root, SHIM};
use crate::record::{InstallRecord, RecordError};
use crate::report::Report;

/// Why uninstall stopped.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// No record: nothing is known to undo.
    #[error(
        "no install record at {0}: nothing to undo (was husk installed with another --prefix or \
         --root?)"
    )]
    NoRecord(PathBuf),
    /// The record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// containerd's config changed so that the handler cannot be removed.
    #[error("containerd config {path}: {source}")]
    Containerd {
        /// The file (host path).
        path: PathBuf,
        /// Why.
        #[source]
        source: ContainerdConfigError,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What uninstall was doing.
        what: &'static str,
        /// The path (host path).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// systemctl.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// What to uninstall.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    /// Where the host's `/` is.
    pub root: Root,
    /// The prefix install used.
    pub prefix: PathBuf,
    /// `systemctl restart containerd` after changing its config.
    pub restart_containerd: bool,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UninstallError {
    let path = path.to_path_buf();
    move |source| UninstallError::Io { what, path, source }
}

fn remove_file(root: &Root, host: &Path) -> Result<bool, UninstallError> {
    match std::fs::remove_file(root.at(host)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io("removing", host)(e)),
    }
}

/// Uninstalls what the record under `opts.prefix` lists.
pub fn uninstall(opts: &UninstallOptions, runner: &dyn Runner) -> Result<Report, UninstallError> {
    let root = &opts.root;
    let layout = Layout {
        prefix: opts.prefix.clone(),
    };
    let record_file = root.at(&layout.record());
    let rec = InstallRecord::load(&record_file)?
        .ok_or_else(|| UninstallError::NoRecord(layout.record()))?;
    let mut report = Report::default();

    if let Some(node) = &rec.node_label {
        match runner.run(&commands::unlabel_node(node)) {
            Ok(()) => report.lines.push(format!(
                "removed label {} from node {node}",
                crate::paths::NODE_LABEL
            )),
            Err(e) => report.lines.push(format!(
                "warning: could not remove the node label ({e}); remove it with \
                 `kubectl label node {node} {}-`",
                crate::paths::NODE_LABEL
            )),
        }
    }

    let mut containerd_changed = false;
    if let Some(edit) = &rec.containerd {
        let at = root.at(&edit.path);
        let current = match std::fs::read_to_string(&at) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &edit.path)(e)),
        };
        let mode = std::fs::metadata(&at)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o644);
        match (current, &edit.original) {
            (None, _) => report.lines.push(format!(
                "{} is gone; nothing to restore",
                edit.path.display()
            )),
            (Some(cur), None) if cur == edit.installed => {
                remove_file(root, &edit.path)?;
                containerd_changed = true;
                report.lines.push(format!(
                    "removed {} (install created it)",
                    edit.path.display()
                ));
            }
            (Some(cur), Some(orig)) if cur == edit.installed => {
                fsops::write_atomic(&at, orig.as_bytes(), mode)
                    .map_err(io("restoring", &edit.path))?;
                containerd_changed = true;
                report.lines.push(format!(
                    "restored {} to its text before install",
                    edit.path.display()
                ));
            }
            (Some(cur), _) => {
                let (text, removed) =
                    containerd::unregister(&cur).map_err(|source| UninstallError::Containerd {
                        path: edit.path.clone(),
                        source,
                    })?;
                if removed {
                    fsops::write_atomic(&at, text.as_bytes(), mode)
                        .map_err(io("writing", &edit.path))?;
                    containerd_changed = true;
                }
                report.lines.push(format!(
                    "{} changed since install: {} the husk handler, kept everything else",
                    edit.path.display(),
                    if removed { "removed" } else { "found no" }
                ));
            }
        }
    }

    if let Some(link) = &rec.link {
        let target = layout.bin().join(SHIM);
        match std::fs::read_link(root.at(link)) {
            Ok(t) if t == target => {
                remove_file(root, link)?;
                report
                    .lines
                    .push(format!("removed link {}", link.display()));
            }
            Ok(_) => report.lines.push(format!(
                "left {} alone: it no longer points at {}",
                link.display(),
                target.display()
            )),
            Err(_) => {}
        }
    }

    if let Some(cfg) = &rec.husk_config {
        match std::fs::read_to_string(root.at(cfg)) {
            Ok(t) if t == husk_config_text(&layout) => {
                remove_file(root, cfg)?;
                report.lines.push(format!("removed {}", cfg.display()));
            }
            Ok(_) => report.lines.push(format!(
                "left {} alone: it was changed after install",
                cfg.display()
            )),
            Err(_) => {}
        }
    }

    for f in &rec.files {
        if remove_file(root, f)? {
            report.lines.push(format!("removed {}", f.display()));
        }
    }
    remove_file(root, &layout.record())?;
    for d in rec.dirs.iter().rev() {
        if std::fs::remove_dir(root.at(d)).is_ok() {
            report
                .lines
                .push(format!("removed directory {}", d.display()));
        }
    }
    report.changed = true;

    if opts.restart_containerd && containerd_changed {
        runner.run(&commands::restart_containerd(root))?;
        report.lines.push("restarted containerd".into());
    }
    Ok(report)
}
