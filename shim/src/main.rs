//! `containerd-shim-husk-v2`: containerd's runtime v2 shim (runtime_type
//! `io.containerd.husk.v2`) that runs each pod, or each plain `ctr run` container, in its own
//! husk micro-VM.
//!
//! containerd runs it three ways (Go-style flags `-namespace ns -address a -id x ...`), and
//! containerd 2.x a fourth, `-info` (see `husk_shim::info`):
//! `start` prints the address of the shim daemon serving this task (launching it if needed),
//! `delete` cleans up after a task whose shim is gone, and with `-socket` it is that daemon,
//! serving `containerd.task.v2.Task` (and containerd 2.x's sandbox service) over ttrpc. docs/DESIGN.md and docs/shim.md
//! describe the whole path.

use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "\
containerd-shim-husk-v2: containerd runtime v2 shim that runs each pod in its own husk micro-VM

Usage: containerd-shim-husk-v2 [-namespace NS] [-address ADDR] [-publish-binary BIN] [-id ID]
                               [-bundle DIR] [-socket ADDR] [-debug] [start|delete]
       containerd-shim-husk-v2 -info    (runtime options on stdin, RuntimeInfo on stdout)
       containerd-shim-husk-v2 template (build|ls|rm) ...   (VM templates; `template` alone: usage)
       containerd-shim-husk-v2 -v | --version | -h | --help

containerd runs this binary for runtime_type io.containerd.husk.v2 (`start`, `delete`, and the
daemon with -socket, and containerd 2.x's -info); it is not meant to be run by hand except for -v and -h.
Configuration: /etc/husk/config.toml, $HUSK_CONFIG, or the runtime options' ConfigPath.";

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
    if args.first().map(String::as_str) == Some("template") {
        let code = husk_shim::vm::template::cli::main(&args[1..]);
        return ExitCode::from(code as u8);
    }
    let flags = match containerd_shim::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e}");
            return ExitCode::from(2);
        }
    };
    if flags.info {
        // containerd 2.x's runtime introspection: options on stdin, RuntimeInfo on stdout.
        return match husk_shim::info::answer(std::io::stdin(), std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("containerd-shim-husk-v2: -info: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if flags.action == "start" {
        // No runtime, no logging: stdout and stderr are the address containerd reads.
        let bundle = std::env::current_dir().unwrap_or_else(|_| ".".into());
        return match husk_shim::start::start(&flags, &bundle) {
            Ok(address) => {
                let mut out = std::io::stdout();
                let _ = out.write_all(address.as_bytes());
                let _ = out.flush();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("containerd-shim-husk-v2: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let bundle = match flags.bundle.as_str() {
        "" => std::env::current_dir().unwrap_or_else(|_| ".".into()),
        b => b.into(),
    };
    if flags.action == "delete" {
        husk_shim::logging::init_stderr();
        return match husk_shim::service::delete(&flags, &bundle, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("containerd-shim-husk-v2: delete: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !flags.action.is_empty() {
        eprintln!("containerd-shim-husk-v2: unknown action {:?}", flags.action);
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // tokio owns husk-vmm and the logger children and reaps them; the daemon is not a
    // subreaper. Logs go to the bundle's log FIFO (logging.rs).
    let served = runtime.block_on(husk_shim::daemon::serve(&flags));
    // Do not wait for blocking-pool threads: one may sit in open(2) on a client's FIFO whose
    // other end never came (ctr closes an unused stdin before opening it). Nothing of the
    // sandbox is left at this point; the process just ends.
    runtime.shutdown_background();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e}");
            ExitCode::FAILURE
        }
    }
}
