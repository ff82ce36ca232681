//! `husk-testhost`: run a command where `/dev/kvm` is hardware virtualization.
//!
//! Natively on a VT-x/AMD-V host; otherwise inside a QEMU TCG guest with emulated AMD SVM and
//! Debian's `kvm_amd`. Propagates the command's output and exit code and enforces a timeout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use husk_tests::hostkind::{detect, SysProbe};
use husk_tests::testhost::{self, RunSpec};

/// Run a command with a hardware-virtualization /dev/kvm (natively, or in the nested test host).
#[derive(Debug, Parser)]
#[command(name = "husk-testhost", version)]
struct Args {
    /// Give up after this many seconds (test host boot included); exit code 124. A test host
    /// that fails under the command (no heartbeat for two minutes, not ready two minutes after
    /// QEMU started, or its kernel died) exits 75 instead: the environment, not the command.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Host directory the command may write to (shared writable at the same path; repeatable).
    #[arg(long = "rw", value_name = "DIR")]
    rw: Vec<PathBuf>,
    /// Extra environment variable for the command, as NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Test host RAM in MiB.
    #[arg(long, default_value_t = 6144)]
    memory: u32,
    /// Test host vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Print the test host's console log after the run.
    #[arg(long, short)]
    verbose: bool,
    /// Only print which mode this host calls for and why.
    #[arg(long)]
    explain: bool,
    /// The command line to run with /bin/sh -c (several words are joined with spaces).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let kind = detect(&SysProbe::system());
    let mode = testhost::choose_mode(kind, std::env::var("HUSK_TESTHOST").ok().as_deref());
    if args.explain {
        println!("{} -> {}", kind, mode.as_str());
        return ExitCode::SUCCESS;
    }
    if args.command.is_empty() {
        eprintln!(
            "husk-testhost: error: no command given (usage: husk-testhost [OPTIONS] -- COMMAND...)"
        );
        return ExitCode::from(2);
    }
    let mut env = Vec::new();
    for pair in &args.env {
        match pair.split_once('=') {
            Some((k, v)) => env.push((k.to_string(), v.to_string())),
            None => {
                eprintln!("husk-testhost: error: --env {pair:?} is not NAME=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    let cwd = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("husk-testhost: error: current directory: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = RunSpec {
        command: args.command.join(" "),
        cwd,
        env,
        rw_dirs: args.rw,
        timeout: Duration::from_secs(args.timeout),
        memory_mib: args.memory,
        cpus: args.cpus,
        verbose: args.verbose,
    };
    testhost::install_signal_handlers();
    eprintln!("husk-testhost: {kind}: running {}", mode.as_str());
    match testhost::run(&spec) {
        Ok(outcome) => ExitCode::from(u8::try_from(outcome.code).unwrap_or(255)),
        Err(e) => {
            eprintln!("husk-testhost: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
