//! `husk-vmm`: runs one micro-VM described by a JSON configuration.
//!
//! Exit codes (husk_protocol::VmmExit): 0 the guest shut down, 1 VMM error, 2 usage,
//! 128+N stopped cleanly on signal N (or a control-socket shutdown, reported as SIGTERM).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use husk_hypervisor::VmmExit;

/// Run one husk micro-VM (one per pod), as configured by the shim.
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version = husk_protocol::VERSION)]
struct Args {
    /// The VM configuration (JSON, the `VmConfig` type of husk-protocol).
    #[arg(long)]
    config: PathBuf,
    /// What a syscall outside a thread's seccomp allow-list does: `kill` the process (the
    /// default, and the only mode for production) or `log` it to the kernel's audit log and
    /// go on (for finding a missing entry while debugging).
    #[arg(long, default_value = "kill")]
    seccomp: husk_hypervisor::seccomp::Mode,
    /// Restore the snapshot in this directory instead of booting the kernel (the
    /// configuration's `restore`, which this overrides).
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
}

fn main() -> ExitCode {
    let started = Instant::now();
    // One malloc arena for every thread. glibc reads /proc/sys/vm/overcommit_memory the first
    // time it shrinks a thread's own arena, which a jailed thread's seccomp filter forbids
    // (and the jail does not hold); the main arena never needs it.
    // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if let Err(e) = husk_hypervisor::vmm::block_termination_signals() {
        eprintln!("husk-vmm: error: blocking termination signals: {e}");
        return ExitCode::from(VmmExit::Error.code() as u8);
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                VmmExit::Usage.code()
            } else {
                0
            };
            return ExitCode::from(code as u8);
        }
    };
    if let Err(e) = husk_hypervisor::seccomp::enforce(args.seccomp) {
        eprintln!("husk-vmm: error: {e}");
        return ExitCode::from(VmmExit::Error.code() as u8);
    }
    let exit = match husk_hypervisor::load_config(&args.config) {
        Err(e) => {
            eprintln!("husk-vmm: error: {e}");
            VmmExit::Error
        }
        Ok(mut config) => {
            if let Some(dir) = args.restore {
                config.restore = Some(std::path::absolute(&dir).unwrap_or(dir));
            }
            match husk_hypervisor::vmm::run(config, started) {
                Ok(exit) => exit,
                Err(e) => {
                    eprintln!("husk-vmm: error: {e}");
                    VmmExit::Error
                }
            }
        }
    };
    ExitCode::from(exit.code().clamp(0, 255) as u8)
}
