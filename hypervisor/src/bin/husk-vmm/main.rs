//! `husk-vmm`: runs one micro-VM described by a JSON configuration.
//!
//! Exit codes (husk_protocol::VmmExit): 0 the guest shut down, 1 VMM error, 2 usage,
//! 128+N stopped cleanly on signal N (or a control-socket shutdown, reported as SIGTERM).

use std::process::ExitCode;
use std::time::Instant;

use husk_hypervisor::VmmExit;

mod args;

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
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(args::Command::Run(a)) => a,
        Ok(args::Command::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(args::Command::Version) => {
            println!("husk-vmm {}", husk_protocol::VERSION);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "husk-vmm: error: {e}\n\n{}\n\nFor more, try '--help'.",
                args::USAGE_LINE
            );
            return ExitCode::from(VmmExit::Usage.code() as u8);
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
