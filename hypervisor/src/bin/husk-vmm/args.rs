//! husk-vmm's command line. The shim is its only regular caller and always passes the same
//! shape, so a small parser does: clap's derive built its whole command model at every start,
//! about 10 ms of each pod's VM start in the nested test host (a third of husk-vmm's time
//! before it reads its configuration).

use std::ffi::OsString;
use std::path::PathBuf;

use husk_hypervisor::seccomp::Mode;

/// The synopsis, printed after a usage error.
pub const USAGE_LINE: &str =
    "Usage: husk-vmm --config <CONFIG> [--seccomp <kill|log>] [--restore <DIR>]";

/// The help text.
pub const USAGE: &str = "\
Run one husk micro-VM (one per pod), as configured by the shim.

Usage: husk-vmm --config <CONFIG> [--seccomp <kill|log>] [--restore <DIR>]

Options:
  --config <CONFIG>   The VM configuration (JSON, the VmConfig type of husk-protocol)
  --seccomp <MODE>    What a syscall outside a thread's seccomp allow-list does: `kill` the
                      process (the default, and the only mode for production) or `log` it to
                      the kernel's audit log and go on (for finding a missing entry)
  --restore <DIR>     Restore the snapshot in this directory instead of booting the kernel
                      (the configuration's `restore`, which this overrides)
  -h, --help          Print this help
  -V, --version       Print the version
";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run a VM.
    Run(Args),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// What running a VM was asked with.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// `--config`.
    pub config: PathBuf,
    /// `--seccomp` (`kill` unless given).
    pub seccomp: Mode,
    /// `--restore`.
    pub restore: Option<PathBuf>,
}

/// What is wrong with a command line; the message names the argument.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// An argument husk-vmm does not take.
    #[error("unexpected argument '{0}'")]
    Unexpected(String),
    /// An option without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// An option given twice.
    #[error("{0} given more than once")]
    Repeated(&'static str),
    /// A value that is not one of the option's.
    #[error("invalid value '{value}' for {option}: {why}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
        /// Why it was refused.
        why: String,
    },
    /// `--config` is missing.
    #[error("the required argument --config <CONFIG> was not provided")]
    NoConfig,
}

/// Parses the arguments after the program name. Options take their value as the next
/// argument or after `=`; `--help` and `--version` win wherever they appear.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut config = None;
    let mut seccomp = None;
    let mut restore = None;
    let mut args = args.into_iter();
    let mut asked = None;
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            return Err(UsageError::Unexpected(arg.to_string_lossy().into_owned()));
        };
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(OsString::from(v))),
            _ => (text, None),
        };
        let option: &'static str = match name {
            "-h" | "--help" => {
                asked.get_or_insert(Command::Help);
                continue;
            }
            "-V" | "--version" => {
                asked.get_or_insert(Command::Version);
                continue;
            }
            "--config" => "--config",
            "--seccomp" => "--seccomp",
            "--restore" => "--restore",
            _ => return Err(UsageError::Unexpected(text.to_string())),
        };
        // A value is never the next option: `--config --restore d` lacks the configuration.
        let next = || {
            args.next()
                .filter(|v| !v.as_encoded_bytes().starts_with(b"--"))
        };
        let value = match inline.or_else(next) {
            Some(v) if !v.is_empty() => v,
            _ => return Err(UsageError::MissingValue(option)),
        };
        let repeated = match option {
            "--config" => config.replace(PathBuf::from(value)).is_some(),
            "--restore" => restore.replace(PathBuf::from(value)).is_some(),
            _ => {
                let text = value.to_string_lossy().into_owned();
                let mode = text.parse::<Mode>().map_err(|why| UsageError::Invalid {
                    option,
                    value: text,
                    why,
                })?;
                seccomp.replace(mode).is_some()
            }
        };
        if repeated {
            return Err(UsageError::Repeated(option));
        }
    }
    if let Some(asked) = asked {
        return Ok(asked);
    }
    Ok(Command::Run(Args {
        config: config.ok_or(UsageError::NoConfig)?,
        seccomp: seccomp.unwrap_or(Mode::Kill),
        restore,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn the_shims_command_line_and_its_spellings() {
        let want = Command::Run(Args {
            config: "/run/vm.json".into(),
            seccomp: Mode::Kill,
            restore: None,
        });
        assert_eq!(parsed(&["--config", "/run/vm.json"]).unwrap(), want);
        assert_eq!(parsed(&["--config=/run/vm.json"]).unwrap(), want);
        assert_eq!(
            parsed(&["--restore", "/t", "--seccomp=log", "--config", "c"]).unwrap(),
            Command::Run(Args {
                config: "c".into(),
                seccomp: Mode::Log,
                restore: Some("/t".into()),
            })
        );
    }

    #[test]
    fn the_help_holds_the_synopsis() {
        assert!(USAGE.contains(USAGE_LINE));
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parsed(&["--help"]).unwrap(), Command::Help);
        assert_eq!(parsed(&["--config", "c", "-V"]).unwrap(), Command::Version);
        assert_eq!(parsed(&["-h", "--version"]).unwrap(), Command::Help);
    }

    #[test]
    fn bad_command_lines_name_the_argument() {
        let e = |args: &[&str]| parsed(args).unwrap_err().to_string();
        assert_eq!(
            e(&[]),
            "the required argument --config <CONFIG> was not provided"
        );
        assert_eq!(e(&["--config"]), "--config needs a value");
        assert_eq!(e(&["--config="]), "--config needs a value");
        assert_eq!(e(&["--config", "--restore", "d"]), "--config needs a value");
        assert_eq!(
            e(&["--config", "a", "--config", "b"]),
            "--config given more than once"
        );
        assert_eq!(
            e(&["--config", "a", "--bogus"]),
            "unexpected argument '--bogus'"
        );
        assert_eq!(e(&["vm.json"]), "unexpected argument 'vm.json'");
        let bad_mode = e(&["--config", "a", "--seccomp", "off"]);
        assert!(
            bad_mode.starts_with("invalid value 'off' for --seccomp"),
            "{bad_mode}"
        );
    }
}
