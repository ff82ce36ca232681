//! `husk install`: places the shim, VMM, this tool, the guest kernel and image under a prefix,
//! links the shim into a directory on containerd's PATH, writes `/etc/husk/config.toml` if
//! there is none, registers the `husk` handler in containerd's config, and optionally labels
//! the node and restarts containerd. Everything it changes goes into the install record
//! (`<prefix>/share/husk/install.json`, see [`crate::record`]), also when a step fails, so
//! `husk uninstall` can undo a partial install.
//!
//! Nothing is touched before every input checked out: the artifacts are all found, the
//! containerd config is a version husk edits and has no conflicting `husk` handler, and the
//! shim link does not clobber someone else's file.

use std::path::{Path, PathBuf};

use crate::artifacts::{MissingArtifacts, Sources};
use crate::commands::{self, CommandError, Runner};
use crate::containerd::{self, ContainerdConfigError, Registered};
use crate::fsops;
use crate::husk_config::husk_config_text;
use crate::paths::{Layout, Root, SHIM};
use crate::record::{ContainerdEdit, InstallRecord, RecordError};
use crate::report::Report;

/// Why install stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Artifacts are missing.
    #[error(transparent)]
    Artifacts(#[from] MissingArtifacts),
    /// containerd's config cannot take the handler.
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
        /// What install was doing.
        what: &'static str,
        /// The path (host path).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shim link would replace a file install does not own.
    #[error(
        "{path} exists and is not husk's link to {target}: move it away or pass --force to \
         replace it"
    )]
    LinkConflict {
        /// The link path (host path).
        path: PathBuf,
        /// What the link should point to.
        target: PathBuf,
    },
    /// The record.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// kubectl or systemctl.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A path option is not absolute.
    #[error("{0} must be an absolute path when --root is given")]
    Relative(PathBuf),
}

/// What to install where (all paths are host paths).
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where the host's `/` is.
    pub root: Root,
    /// The install prefix.
    pub prefix: PathBuf,
    /// containerd's config file.
    pub containerd_config: PathBuf,
    /// husk's config file (the handler's `ConfigPath`).
    pub husk_config: PathBuf,
    /// A directory on containerd's PATH for the shim link.
    pub link_dir: PathBuf,
    /// Where the artifacts come from.
    pub sources: Sources,
    /// Replace a conflicting handler or link.
    pub force: bool,
    /// `systemctl restart containerd` after changing its config.
    pub restart_containerd: bool,
    /// Label this node `husk.io/runtime=true`.
    pub label_node: Option<String>,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

/// The planned containerd edit: the file (the main config, or husk's drop-in where the main
/// config imports a drop-in directory), its text before (None: no file) and after.
struct ConfigPlan {
    path: PathBuf,
    before: Option<String>,
    after: String,
    version: containerd::Version,
    outcome: Registered,
}

fn read_optional(opts: &InstallOptions, path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(opts.root.at(path)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading containerd config", path)(e)),
    }
}

fn plan_containerd(opts: &InstallOptions) -> Result<ConfigPlan, InstallError> {
    let main_path = &opts.containerd_config;
    let main = read_optional(opts, main_path)?;
    let config_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Containerd { path, source }
    };
    let drop_in = main
        .as_deref()
        .and_then(|t| containerd::imports::drop_in(t, main_path));
    let (path, before, base) = match drop_in {
        Some(d) => {
            let main_version = containerd::version(main.as_deref().unwrap_or_default())
                .map_err(config_error(main_path))?;
            let before = read_optional(opts, &d)?;
            let base = before
                .clone()
                .unwrap_or_else(|| containerd::imports::new_drop_in(main_version.number()));
            (d, before, base)
        }
        None => {
            let base = main
                .clone()
                .unwrap_or_else(|| containerd::MINIMAL_V2.to_string());
            (main_path.clone(), main, base)
        }
    };
    let config_path = opts.husk_config.display().to_string();
    let (after, version, outcome) =
        containerd::register(&base, &config_path, opts.force).map_err(config_error(&path))?;
    Ok(ConfigPlan {
        path,
        before,
        after,
        version,
        outcome,
    })
}

/// The link's state: `Ok(true)` it is ours already, `Ok(false)` free (or forced).
fn link_state(opts: &InstallOptions, link: &Path, target: &Path) -> Result<bool, InstallError> {
    match std::fs::read_link(opts.root.at(link)) {
        Ok(t) if t == target => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        _ if opts.force => Ok(false),
        _ => Err(InstallError::LinkConflict {
            path: link.to_path_buf(),
            target: target.to_path_buf(),
        }),
    }
}

/// Installs husk; `runner` runs kubectl and systemctl.
pub fn install(opts: &InstallOptions, runner: &dyn Runner) -> Result<Report, InstallError> {
    if !opts.root.is_system() {
        for p in [
            &opts.prefix,
            &opts.containerd_config,
            &opts.husk_config,
            &opts.link_dir,
        ] {
            if !p.is_absolute() {
                return Err(InstallError::Relative(p.clone()));
            }
        }
    }
    let layout = Layout {
        prefix: opts.prefix.clone(),
    };
    // Everything is checked before anything changes.
    let artifacts = opts.sources.resolve()?;
    let plan = plan_containerd(opts)?;
    let link = opts.link_dir.join(SHIM);
    let target = layout.bin().join(SHIM);
    let want_link = opts.root.at(&opts.link_dir) != opts.root.at(&layout.bin());
    let link_ok = want_link && link_state(opts, &link, &target)?;

    let record_file = opts.root.at(&layout.record());
    let old = InstallRecord::load(&record_file)?;
    let mut rec = old
        .clone()
        .unwrap_or_else(|| InstallRecord::new(&opts.prefix));
    let mut report = Report::default();
    let result = apply(
        opts,
        runner,
        &layout,
        &artifacts,
        plan,
        (want_link, link_ok, &link, &target),
        &mut rec,
        &mut report,
    );
    if old.as_ref() != Some(&rec) && !rec.is_empty() {
        rec.save(&record_file)?;
        if old.is_none() {
            report.changed(format!(
                "recorded the install in {}",
                layout.record().display()
            ));
        }
    }
    result?;
    if let Some(node) = &opts.label_node {
        runner.run(&commands::label_node(node))?;
        if rec.node_label.as_deref() != Some(node) {
            rec.node_label = Some(node.clone());
            rec.save(&record_file)?;
            report.changed(format!(
                "labelled node {node} {}=true",
                crate::paths::NODE_LABEL
            ));
        } else {
            report.same(format!("node {node} is labelled (label re-applied)"));
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn apply(
    opts: &InstallOptions,
    runner: &dyn Runner,
    layout: &Layout,
    artifacts: &[crate::artifacts::Artifact],
    plan: ConfigPlan,
    (want_link, link_ok, link, target): (bool, bool, &Path, &Path),
    rec: &mut InstallRecord,
    report: &mut Report,
) -> Result<(), InstallError> {
    let root = &opts.root;
    let mkdirs = |host: &Path, rec: &mut InstallRecord| -> Result<(), InstallError> {
        let created = fsops::create_dirs(&root.at(host), host).map_err(io("creating", host))?;
        for d in created {
            if !rec.dirs.contains(&d) {
                rec.dirs.push(d);
            }
        }
        Ok(())
    };

    // Artifacts.
    mkdirs(&layout.bin(), rec)?;
    mkdirs(&layout.share(), rec)?;
    for a in artifacts {
        let host = opts.prefix.join(&a.dest);
        let dst = root.at(&host);
        if fsops::same_file(&a.source, &dst, a.mode).map_err(io("comparing", &host))? {
            report.same(format!("{} is up to date", host.display()));
            continue;
        }
        let existed = dst.exists();
        fsops::copy_atomic(&a.source, &dst, a.mode).map_err(io("copying to", &host))?;
        if existed {
            report.changed(format!(
                "updated {} from {}",
                host.display(),
                a.source.display()
            ));
        } else {
            if !rec.files.contains(&host) {
                rec.files.push(host.clone());
            }
            report.changed(format!(
                "installed {} from {}",
                host.display(),
                a.source.display()
            ));
        }
    }

    // The shim on containerd's PATH.
    if !want_link {
        report.same(format!(
            "{} is the link directory itself",
            layout.bin().display()
        ));
    } else if link_ok {
        report.same(format!(
            "{} -> {} is in place",
            link.display(),
            target.display()
        ));
    } else {
        mkdirs(&opts.link_dir, rec)?;
        let at = root.at(link);
        if at.symlink_metadata().is_ok() {
            std::fs::remove_file(&at).map_err(io("replacing", link))?;
        }
        std::os::unix::fs::symlink(target, &at).map_err(io("linking", link))?;
        rec.link = Some(link.to_path_buf());
        report.changed(format!("linked {} -> {}", link.display(), target.display()));
    }

    // husk's config, only if there is none.
    let cfg = root.at(&opts.husk_config);
    if cfg.exists() {
        report.same(format!(
            "{} exists (kept as it is)",
            opts.husk_config.display()
        ));
    } else {
        if let Some(parent) = opts.husk_config.parent() {
            mkdirs(parent, rec)?;
        }
        fsops::write_atomic(&cfg, husk_config_text(layout).as_bytes(), 0o644)
            .map_err(io("writing", &opts.husk_config))?;
        rec.husk_config = Some(opts.husk_config.clone());
        report.changed(format!("wrote {}", opts.husk_config.display()));
    }

    // containerd's config.
    let ccfg = &plan.path;
    let header = plan.version.header();
    if plan.outcome == Registered::AlreadyPresent && plan.before.is_some() {
        report.same(format!("{} already registers [{header}]", ccfg.display()));
        return Ok(());
    }
    let at = root.at(ccfg);
    let mode = std::fs::metadata(&at)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o644);
    if let Some(parent) = ccfg.parent() {
        mkdirs(parent, rec)?;
    }
    fsops::write_atomic(&at, plan.after.as_bytes(), mode).map_err(io("writing", ccfg))?;
    // A second (forced) edit keeps the first install's original.
    let original = match &rec.containerd {
        Some(prev) if prev.path == *ccfg => prev.original.clone(),
        _ => plan.before.clone(),
    };
    rec.containerd = Some(ContainerdEdit {
        path: ccfg.clone(),
        version: plan.version,
        original,
        installed: plan.after,
    });
    let verb = match (plan.before.is_none(), plan.outcome) {
        (true, _) => "created with",
        (false, Registered::Replaced) => "replaced (--force)",
        _ => "added",
    };
    report.changed(format!(
        "{}: {verb} [{header}] (config version {})",
        ccfg.display(),
        plan.version.number()
    ));
    if opts.restart_containerd {
        runner.run(&commands::restart_containerd(root))?;
        report.changed("restarted containerd".into());
    }
    Ok(())
}
