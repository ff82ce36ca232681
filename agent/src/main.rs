//! `husk-agent`: the guest's init and container runtime. Built in the agent issue.

use std::process::ExitCode;

use clap::Parser;

/// PID 1 inside a husk micro-VM: serves the agent API over vsock and runs OCI containers.
#[derive(Debug, Parser)]
#[command(name = "husk-agent", version = husk_protocol::VERSION)]
struct Args {
    /// Run on a normal Linux host serving on this Unix socket instead of vsock (for tests).
    #[arg(long, value_name = "SOCKET")]
    host_mode: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("husk-agent: error: the agent is not built yet (the agent issue)");
    ExitCode::FAILURE
}
