//! The external commands install and uninstall run (kubectl, systemctl), behind a trait so the
//! command lines are tested without a cluster. When the host is mounted at a root other than
//! `/` (the DaemonSet, `hostPID: true`), systemctl runs in the host's mount namespace through
//! `nsenter --target 1 --mount`, as kata-deploy does.

use std::process::Command;

use crate::paths::{Root, NODE_LABEL};

/// A command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not start.
    #[error("`{cmd}` could not run: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited non-zero.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
}

/// Runs a program with arguments to completion.
pub trait Runner {
    /// Runs `argv[0]` with the rest as arguments.
    fn run(&self, argv: &[String]) -> Result<(), CommandError>;
}

/// The real runner.
#[derive(Debug, Default, Clone, Copy)]
pub struct System;

impl Runner for System {
    fn run(&self, argv: &[String]) -> Result<(), CommandError> {
        let cmd = argv.join(" ");
        tracing::info!(%cmd, "running");
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|source| CommandError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CommandError::Failed {
                cmd,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// `systemctl restart containerd`, in the host's mount namespace when `root` is not `/`.
pub fn restart_containerd(root: &Root) -> Vec<String> {
    if root.is_system() {
        argv(&["systemctl", "restart", "containerd"])
    } else {
        argv(&[
            "nsenter",
            "--target",
            "1",
            "--mount",
            "--",
            "systemctl",
            "restart",
            "containerd",
        ])
    }
}

/// `kubectl label node NAME husk.io/runtime=true --overwrite`.
pub fn label_node(node: &str) -> Vec<String> {
    let label = format!("{NODE_LABEL}=true");
    argv(&["kubectl", "label", "node", node, &label, "--overwrite"])
}

/// `kubectl label node NAME husk.io/runtime-` (no error if the label is gone already).
pub fn unlabel_node(node: &str) -> Vec<String> {
    let label = format!("{NODE_LABEL}-");
    argv(&["kubectl", "label", "node", node, &label])
}

#[cfg(test)]
pub mod fake {
    //! A runner that records command lines and fails the ones it is told to.

    use std::cell::RefCell;

    use super::*;

    /// Records every command; fails those whose program is in `fail`.
    #[derive(Debug, Default)]
    pub struct Recorder {
        /// The commands run, in order.
        pub ran: RefCell<Vec<String>>,
        /// Programs that fail.
        pub fail: Vec<&'static str>,
    }

    impl Runner for Recorder {
        fn run(&self, argv: &[String]) -> Result<(), CommandError> {
            let cmd = argv.join(" ");
            self.ran.borrow_mut().push(cmd.clone());
            if self.fail.contains(&argv[0].as_str()) {
                return Err(CommandError::Failed {
                    cmd,
                    status: "exit status: 1".into(),
                    stderr: "no cluster".into(),
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        assert_eq!(
            restart_containerd(&Root::new("/")).join(" "),
            "systemctl restart containerd"
        );
        assert_eq!(
            restart_containerd(&Root::new("/host")).join(" "),
            "nsenter --target 1 --mount -- systemctl restart containerd"
        );
        assert_eq!(
            label_node("n1").join(" "),
            "kubectl label node n1 husk.io/runtime=true --overwrite"
        );
        assert_eq!(
            unlabel_node("n1").join(" "),
            "kubectl label node n1 husk.io/runtime-"
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = System
            .run(&["/nonexistent/husk-no-such-program".to_string()])
            .unwrap_err();
        assert!(e.to_string().contains("husk-no-such-program"), "{e}");
    }
}
