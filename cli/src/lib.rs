//! `husk`, the node tool: [`install`] places husk on a node and registers it with containerd,
//! [`uninstall`] undoes exactly what install recorded ([`record`]), [`check`] tells whether a
//! host can run husk.
//!
//! Installed layout (what the shim's config module expects, see `husk_protocol::config`):
//! `<prefix>/bin/{containerd-shim-husk-v2,husk-vmm,husk}`,
//! `<prefix>/share/husk/{vmlinux,husk-initrd.img,install.json}`, `/etc/husk/config.toml`, and
//! `containerd-shim-husk-v2` linked into a directory on containerd's PATH. Every host path goes
//! through a [`paths::Root`], so the same code installs onto `/` or onto a host mounted at
//! `/host` (the DaemonSet) or a test's temporary directory.

pub mod artifacts;
pub mod check;
pub mod commands;
pub mod containerd;
pub mod fsops;
pub mod husk_config;
pub mod install;
#[cfg(test)]
mod install_tests;
pub mod paths;
pub mod record;
pub mod report;
pub mod uninstall;
