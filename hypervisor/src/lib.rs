//! husk's virtual machine monitor, as a library: the `husk-vmm` binary is a thin edge over it.
//!
//! The machine model (KVM, guest memory, boot, devices) arrives in the VMM issue; this crate
//! currently offers only the configuration loading both sides share.

use std::path::Path;

use husk_protocol::{VmConfig, VmConfigError};

/// Errors of loading a VM configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read VM config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file's contents are not a valid configuration.
    #[error("VM config {path}: {source}")]
    Invalid { path: String, source: VmConfigError },
}

/// Reads and validates a JSON VM configuration file.
pub fn load_config(path: &Path) -> Result<VmConfig, ConfigFileError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: display.clone(),
        source,
    })?;
    VmConfig::from_json(&text).map_err(|source| ConfigFileError::Invalid {
        path: display,
        source,
    })
}
