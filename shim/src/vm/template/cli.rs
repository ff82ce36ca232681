//! `containerd-shim-husk-v2 template build|ls|rm`: templates by hand, for a node that should
//! restore its first pod too, and for looking at and clearing what is there.

use std::path::PathBuf;

use husk_protocol::template::{list, remove};

use super::build::build;
use crate::config::HuskConfig;
use crate::vm::size::VmSize;

/// The subcommands' usage.
pub const USAGE: &str = "\
Usage: containerd-shim-husk-v2 template build [--vcpus N] [--memory-mib M] [--nics K] [--config FILE]
       containerd-shim-husk-v2 template ls [--config FILE]
       containerd-shim-husk-v2 template rm (NAME... | --all) [--config FILE]

build makes the template of the VM a pod with K network interfaces (default 1, as a CRI pod
has; ctr pods have 0) gets at the given size (default: the husk config's vcpus and
memory_mib); ls lists what is in template_dir; rm removes templates (and leftovers of builds
cut short).";

/// Most NICs a template is made with by hand (a pod has one per CNI interface).
const MAX_NICS: u8 = 8;

#[derive(Debug)]
struct Args {
    config: Option<PathBuf>,
    vcpus: Option<u8>,
    memory_mib: Option<u32>,
    nics: u8,
    all: bool,
    names: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        config: None,
        vcpus: None,
        memory_mib: None,
        nics: 1,
        all: false,
        names: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--config" => a.config = Some(PathBuf::from(value("--config")?)),
            "--vcpus" => {
                let v = value("--vcpus")?;
                a.vcpus = Some(
                    v.parse()
                        .map_err(|_| format!("--vcpus {v:?}: not a count"))?,
                );
            }
            "--memory-mib" => {
                let v = value("--memory-mib")?;
                a.memory_mib = Some(
                    v.parse()
                        .map_err(|_| format!("--memory-mib {v:?}: not a size"))?,
                );
            }
            "--nics" => {
                let v = value("--nics")?;
                a.nics = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_NICS)
                    .ok_or_else(|| format!("--nics {v:?}: not a count of 0 to {MAX_NICS}"))?;
            }
            "--all" => a.all = true,
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            name => a.names.push(name.to_string()),
        }
    }
    Ok(a)
}

fn config(args: &Args) -> Result<HuskConfig, String> {
    crate::config::load(args.config.as_deref())
        .map(|l| l.config)
        .map_err(|e| e.to_string())
}

/// Runs `template <args>`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let Some((verb, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return 2;
    };
    let parsed = match parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("template {verb}: {e}\n{USAGE}");
            return 2;
        }
    };
    let outcome = match verb.as_str() {
        "build" => run_build(&parsed),
        "ls" => run_ls(&parsed),
        "rm" => run_rm(&parsed),
        other => {
            eprintln!("template: unknown subcommand {other:?}\n{USAGE}");
            return 2;
        }
    };
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("template {verb}: {e}");
            1
        }
    }
}

fn run_build(args: &Args) -> Result<(), String> {
    let config = config(args)?;
    let size = VmSize {
        vcpus: args.vcpus.unwrap_or(config.vcpus),
        memory_mib: args.memory_mib.unwrap_or(config.memory_mib),
    };
    let bindir = crate::config::shim_bindir();
    let a = config.artifacts(&bindir);
    let shape = super::shape(
        &a,
        size,
        &config.extra_cmdline,
        usize::from(args.nics),
        config.free_page_reporting,
    )
    .map_err(|e| e.to_string())?;
    // The builder VM dies with the thread that started it: this one, which waits for it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match rt.block_on(build(&bindir, &config, size, &shape)) {
        Ok(b) if b.made => {
            println!(
                "template {} made in {} ms: {} ({} MiB of guest RAM data)",
                shape.key(),
                b.ms,
                b.dir.display(),
                b.memory_bytes >> 20
            );
            Ok(())
        }
        Ok(b) => {
            println!(
                "template {} is there already: {}",
                shape.key(),
                b.dir.display()
            );
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn run_ls(args: &Args) -> Result<(), String> {
    let config = config(args)?;
    let root = &config.template_dir;
    let entries = list(root).map_err(|e| format!("{}: {e}", root.display()))?;
    println!(
        "{:<18} {:>5} {:>8} {:>4} {:>10}  KERNEL",
        "NAME", "VCPUS", "MEMORY", "NICS", "DATA"
    );
    for e in entries {
        match e.meta {
            Ok(m) => println!(
                "{:<18} {:>5} {:>5}MiB {:>4} {:>7}MiB  {}",
                e.name,
                m.shape.vcpus,
                m.shape.memory_mib,
                m.shape.nics,
                m.memory_bytes >> 20,
                m.shape.kernel.path.display()
            ),
            Err(why) => println!("{:<18} (unusable: {why})", e.name),
        }
    }
    Ok(())
}

fn run_rm(args: &Args) -> Result<(), String> {
    let config = config(args)?;
    let root = &config.template_dir;
    let names: Vec<String> = if args.all {
        list(root)
            .map_err(|e| format!("{}: {e}", root.display()))?
            .into_iter()
            .map(|e| e.name)
            .collect()
    } else if args.names.is_empty() {
        return Err("name the templates to remove, or --all".into());
    } else {
        args.names.clone()
    };
    for name in names {
        remove(root, &name).map_err(|e| format!("{name}: {e}"))?;
        println!("removed {name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_and_bad_ones_are_named() {
        let a = parse(&args(&["--vcpus", "2", "--memory-mib", "512", "x"])).unwrap();
        assert_eq!(
            (a.vcpus, a.memory_mib, a.names.len()),
            (Some(2), Some(512), 1)
        );
        assert!(parse(&args(&["--vcpus", "two"]))
            .unwrap_err()
            .contains("two"));
        assert!(parse(&args(&["--memory-mib"]))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&args(&["--force"])).unwrap_err().contains("--force"));
        assert_eq!(parse(&args(&[])).unwrap().nics, 1, "a CRI pod's one NIC");
        assert_eq!(parse(&args(&["--nics", "0"])).unwrap().nics, 0);
        assert!(parse(&args(&["--nics", "9"]))
            .unwrap_err()
            .contains("0 to 8"));
    }

    #[test]
    fn ls_and_rm_work_on_the_configured_directory() {
        let t = tempfile::tempdir().unwrap();
        let conf = t.path().join("config.toml");
        let root = t.path().join("templates");
        std::fs::write(
            &conf,
            format!("template_dir = {:?}\n", root.display().to_string()),
        )
        .unwrap();
        std::fs::create_dir_all(root.join(".building-x")).unwrap();
        let c = conf.display().to_string();
        assert_eq!(main(&args(&["ls", "--config", &c])), 0);
        assert_eq!(main(&args(&["rm", "--config", &c])), 1, "nothing named");
        assert_eq!(main(&args(&["rm", "--all", "--config", &c])), 0);
        assert!(!root.join(".building-x").exists());
        assert_eq!(main(&args(&["frobnicate"])), 2);
    }
}
