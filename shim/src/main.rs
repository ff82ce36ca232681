//! `containerd-shim-husk-v2`: the containerd runtime v2 shim (runtime_type `io.containerd.husk.v2`).
//!
//! containerd starts it with Go-style flags (`-namespace ns -address a -id x start`). The task
//! service arrives in the shim issue; until then every action fails with a message that says so.

use std::process::ExitCode;

const USAGE: &str = "\
containerd-shim-husk-v2: containerd runtime v2 shim that runs each pod in its own husk micro-VM

Usage: containerd-shim-husk-v2 [-namespace NS] [-address ADDR] [-publish-binary BIN] [-id ID]
                               [-bundle DIR] [-debug] {start|delete}
       containerd-shim-husk-v2 -v | --version | -h | --help

containerd runs this binary for runtime_type io.containerd.husk.v2; it is not meant to be run
by hand except for -v and -h.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!("containerd-shim-husk-v2 {}", husk_protocol::VERSION);
        return ExitCode::SUCCESS;
    }
    eprintln!("containerd-shim-husk-v2: error: the task service is not built yet (the shim issue)");
    ExitCode::FAILURE
}
