//! `husk`: install husk on a node, uninstall it, check that a host can run it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use husk_cli::artifacts::Sources;
use husk_cli::check::{self, CheckOptions};
use husk_cli::commands::System;
use husk_cli::install::{install, InstallOptions};
use husk_cli::paths::{absolute, Root};
use husk_cli::report::Report;
use husk_cli::uninstall::{uninstall, UninstallOptions};

#[derive(Debug, Parser)]
#[command(
    name = "husk",
    version,
    about = "Install husk on a node and check that it can run husk pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the shim, VMM, guest kernel and image, and register the `husk` handler in
    /// containerd's config. Idempotent; records what it did for `husk uninstall`.
    Install {
        /// The host's root (the DaemonSet mounts the host at /host); every path is below it.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Install prefix: <prefix>/bin, <prefix>/share/husk.
        #[arg(long, default_value = "/opt/husk")]
        prefix: PathBuf,
        /// containerd's config file (created as a minimal version 2 config if missing).
        #[arg(long, default_value = check::CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
        /// husk's config file, written only if absent (the handler's ConfigPath).
        #[arg(long, default_value = husk_protocol::config::SYSTEM_CONFIG)]
        husk_config: PathBuf,
        /// A directory on containerd's PATH where containerd-shim-husk-v2 is linked.
        #[arg(long, default_value = "/usr/local/bin")]
        link_dir: PathBuf,
        /// Where the artifacts are (flat, or bin/ + share/husk/); default: next to this binary
        /// or the repository's build output, the kernel from HUSK_KERNEL.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// Run `systemctl restart containerd` when its config changed.
        #[arg(long)]
        restart_containerd: bool,
        /// Label this Kubernetes node husk.io/runtime=true (kubectl).
        #[arg(long, value_name = "NAME")]
        label_node: Option<String>,
        /// Replace a different existing `husk` handler or shim link.
        #[arg(long)]
        force: bool,
    },
    /// Undo exactly what `husk install` recorded under the prefix.
    Uninstall {
        /// The host's root.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The prefix install used.
        #[arg(long, default_value = "/opt/husk")]
        prefix: PathBuf,
        /// Run `systemctl restart containerd` when its config changed.
        #[arg(long)]
        restart_containerd: bool,
    },
    /// Tell whether this host can run husk: one line per check, a fix for each failure.
    Check {
        /// husk's config (default: $HUSK_CONFIG, then /etc/husk/config.toml, as the shim).
        #[arg(long)]
        config: Option<PathBuf>,
        /// containerd's config file.
        #[arg(long)]
        containerd_config: Option<PathBuf>,
        /// containerd's gRPC socket, to ask the running containerd (ctr, crictl).
        #[arg(long)]
        containerd_address: Option<PathBuf>,
    },
    /// VM templates: `build [--vcpus N] [--memory-mib M]`, `ls`, `rm NAME... | --all` (run by
    /// containerd-shim-husk-v2, found next to this binary or on PATH, which boots the
    /// template's VM).
    #[command(disable_help_flag = true)]
    Template {
        /// The subcommand and its options, handed to `containerd-shim-husk-v2 template`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `containerd-shim-husk-v2`: next to this binary, else on PATH.
fn shim_binary() -> PathBuf {
    let next = husk_protocol::config::shim_bindir().join("containerd-shim-husk-v2");
    if next.is_file() {
        next
    } else {
        PathBuf::from("containerd-shim-husk-v2")
    }
}

fn print(report: &Report, nothing: &str) {
    for l in &report.lines {
        println!("{l}");
    }
    if !report.changed {
        println!("{nothing}");
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Template { args } => {
            let shim = shim_binary();
            let status = std::process::Command::new(&shim)
                .arg("template")
                .args(&args)
                .status()
                .map_err(|e| anyhow::anyhow!("running {}: {e}", shim.display()))?;
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        Command::Install {
            root,
            prefix,
            containerd_config,
            husk_config,
            link_dir,
            artifacts,
            restart_containerd,
            label_node,
            force,
        } => {
            let root = absolute(&root);
            let host = |p: PathBuf| {
                if root == std::path::Path::new("/") {
                    absolute(&p)
                } else {
                    p
                }
            };
            let opts = InstallOptions {
                root: Root::new(&root),
                prefix: host(prefix),
                containerd_config: host(containerd_config),
                husk_config: host(husk_config),
                link_dir: host(link_dir),
                sources: Sources::from_process(artifacts.map(|a| absolute(&a))),
                force,
                restart_containerd,
                label_node,
            };
            let report = install(&opts, &System).context("husk install")?;
            print(&report, "husk install: already installed, nothing changed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall {
            root,
            prefix,
            restart_containerd,
        } => {
            let root = absolute(&root);
            let prefix = if root == std::path::Path::new("/") {
                absolute(&prefix)
            } else {
                prefix
            };
            let opts = UninstallOptions {
                root: Root::new(&root),
                prefix,
                restart_containerd,
            };
            let report = uninstall(&opts, &System).context("husk uninstall")?;
            print(&report, "");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            config,
            containerd_config,
            containerd_address,
        } => {
            let lines = check::run(
                &check::system::System,
                &CheckOptions {
                    config,
                    containerd_config,
                    containerd_address,
                },
            );
            for l in &lines {
                println!("{l}");
            }
            if check::failed(&lines) {
                println!("husk cannot run on this host until every FAIL above is fixed");
                Ok(ExitCode::FAILURE)
            } else {
                println!("this host can run husk");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
