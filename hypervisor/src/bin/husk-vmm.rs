//! `husk-vmm`: runs one micro-VM described by a JSON configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Run one husk micro-VM (one per pod), as configured by the shim.
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version = husk_protocol::VERSION)]
struct Args {
    /// The VM configuration (JSON, the `VmConfig` type of husk-protocol).
    #[arg(long)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match husk_hypervisor::load_config(&args.config) {
        Ok(_) => {
            eprintln!("husk-vmm: error: booting a VM is not built yet (the VMM issue)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("husk-vmm: error: {e}");
            ExitCode::FAILURE
        }
    }
}
