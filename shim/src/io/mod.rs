//! A process's stdio, from containerd's strings to copy loops.
//!
//! containerd names each stream with a string: empty (no stream), a FIFO path (`fifo://` or
//! none), `file:///abs` or `binary:///abs?k=v` (ctr's `--log-uri`, usually the same URI for
//! stdout and stderr). With `terminal`, stdout carries the pty and stderr is unused. The guest
//! side is one vsock connection per stream ([`streams`]); the shim publishes a process's exit
//! only once [`ProcessIo::drained`] says every output byte reached the host side.

pub mod binary;
pub mod fifo;
pub mod file;
pub mod streams;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;

use containerd_shim_protos::ttrpc::Code;
use husk_protocol::agent::api;
use husk_protocol::stdio::StreamKind;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::Agent;

/// A stdio setup that failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A stdio string the shim cannot use.
    #[error("stdio {uri:?}: {message}")]
    Uri {
        /// The string.
        uri: String,
        /// Why.
        message: String,
    },
    /// Opening a host file failed.
    #[error("{context}: {source}")]
    Host {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A logging binary failed.
    #[error("logging binary {path}: {message}")]
    Logger {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A guest stream could not be attached.
    #[error("attaching {kind} of {process}: {message}")]
    Stream {
        /// Which stream.
        kind: StreamKind,
        /// `cid` or `cid/eid`.
        process: String,
        /// Why.
        message: String,
        /// The connection failed (as opposed to the agent refusing the stream): the VM may
        /// have ended under it.
        transport: bool,
    },
}

impl IoError {
    /// The guest stream's connection failed; the VM may have ended under it.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            IoError::Stream {
                transport: true,
                ..
            }
        )
    }

    /// The ttrpc code for containerd.
    pub fn code(&self) -> Code {
        match self {
            IoError::Uri { .. } => Code::INVALID_ARGUMENT,
            _ => Code::INTERNAL,
        }
    }
}

/// The stdio a task or exec request asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioSpec {
    /// stdin FIFO, or empty.
    pub stdin: String,
    /// stdout destination, or empty.
    pub stdout: String,
    /// stderr destination, or empty.
    pub stderr: String,
    /// Run on a pty.
    pub terminal: bool,
}

impl StdioSpec {
    /// The streams a Create or Exec request names, each checked ([`StdioSpec::validate`]).
    pub fn checked(
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<StdioSpec, IoError> {
        let s = StdioSpec {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal,
        };
        s.validate()?;
        Ok(s)
    }

    /// Which streams the agent must expect.
    pub fn agent_stdio(&self) -> api::Stdio {
        let mut s = api::Stdio::new();
        s.stdin = !self.stdin.is_empty();
        s.stdout = !self.stdout.is_empty();
        s.stderr = !self.stderr.is_empty() && !self.terminal;
        s.terminal = self.terminal;
        s
    }

    /// Checks every string parses (so Create fails before anything starts).
    pub fn validate(&self) -> Result<(), IoError> {
        parse_destination(&self.stdout)?;
        parse_destination(&self.stderr)?;
        if !self.stdin.is_empty() {
            match parse_destination(&self.stdin)? {
                Some(Destination::Fifo(_)) => {}
                _ => {
                    return Err(IoError::Uri {
                        uri: self.stdin.clone(),
                        message: "stdin must be a FIFO path".into(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Where output goes on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A FIFO the client reads.
    Fifo(PathBuf),
    /// A file appended to.
    File(PathBuf),
    /// A logging binary and its arguments.
    Binary {
        /// The binary.
        path: PathBuf,
        /// The query pairs, flattened to `k v k v`.
        args: Vec<String>,
    },
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one stdio string.
pub fn parse_destination(uri: &str) -> Result<Option<Destination>, IoError> {
    if uri.is_empty() {
        return Ok(None);
    }
    let bad = |message: &str| IoError::Uri {
        uri: uri.to_string(),
        message: message.to_string(),
    };
    let (scheme, rest) = match uri.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("fifo", uri),
    };
    let (path, query) = match scheme {
        "binary" => rest.split_once('?').unwrap_or((rest, "")),
        _ => (rest, ""),
    };
    let path = PathBuf::from(percent_decode(path));
    if !path.is_absolute() {
        return Err(bad("the path must be absolute"));
    }
    match scheme {
        "fifo" => Ok(Some(Destination::Fifo(path))),
        "file" => Ok(Some(Destination::File(path))),
        "binary" => {
            let mut args = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                args.push(percent_decode(k));
                if !v.is_empty() {
                    args.push(percent_decode(v));
                }
            }
            Ok(Some(Destination::Binary { path, args }))
        }
        _ => Err(bad("unsupported scheme (fifo, file:// and binary:// are)")),
    }
}

type BoxWriter = Pin<Box<dyn AsyncWrite + Send>>;
type SinkFuture = Pin<Box<dyn std::future::Future<Output = Option<BoxWriter>> + Send>>;

/// The live stdio of one process. Shared (`Arc`) between the task service and the exit
/// watcher; nothing in it needs a lock held across an await.
#[derive(Debug)]
pub struct ProcessIo {
    stdin_close: watch::Sender<bool>,
    drained: watch::Receiver<bool>,
    rest: std::sync::Mutex<Option<Rest>>,
}

#[derive(Debug)]
struct Rest {
    tasks: Vec<JoinHandle<()>>,
    aborts: Vec<tokio::task::AbortHandle>,
    loggers: Vec<binary::Logger>,
    fifos: Vec<(PathBuf, fifo::End)>,
}

fn fifo_sink(path: PathBuf) -> SinkFuture {
    Box::pin(async move {
        match fifo::open_writer(path.clone()).await {
            Ok(s) => Some(Box::pin(s) as BoxWriter),
            Err(e) => {
                tracing::warn!("opening output FIFO {}: {e}", path.display());
                None
            }
        }
    })
}

fn ready_sink(w: BoxWriter) -> SinkFuture {
    Box::pin(async move { Some(w) })
}

/// The host side of one output stream.
fn make_sink(
    uri: &str,
    which: StreamKind,
    logger_pipes: &HashMap<Destination, binary::LoggerPipes>,
    fifos: &mut Vec<(PathBuf, fifo::End)>,
) -> Result<Option<SinkFuture>, IoError> {
    let Some(dest) = parse_destination(uri)? else {
        return Ok(None);
    };
    Ok(Some(match &dest {
        Destination::Fifo(p) => {
            fifos.push((p.clone(), fifo::End::Write));
            fifo_sink(p.clone())
        }
        Destination::File(p) => ready_sink(Box::pin(file::open_append(p)?)),
        Destination::Binary { .. } => {
            let pipes = logger_pipes.get(&dest).ok_or_else(|| IoError::Uri {
                uri: uri.to_string(),
                message: "logger was not started".into(),
            })?;
            let fd = match which {
                StreamKind::Stderr => pipes.stderr.try_clone(),
                _ => pipes.stdout.try_clone(),
            }
            .map_err(|source| IoError::Host {
                context: "duplicating a logger pipe".into(),
                source,
            })?;
            let sender = tokio::net::unix::pipe::Sender::from_owned_fd(fd).map_err(|source| {
                IoError::Host {
                    context: "using a logger pipe".into(),
                    source,
                }
            })?;
            ready_sink(Box::pin(sender))
        }
    }))
}

impl ProcessIo {
    /// A process without any stdio (its drain is immediate).
    pub fn none() -> ProcessIo {
        let (stdin_close, _) = watch::channel(true);
        let (_, drained) = watch::channel(true);
        ProcessIo {
            stdin_close,
            drained,
            rest: std::sync::Mutex::new(None),
        }
    }

    /// Opens the host side and the guest streams of `(cid, eid)` and starts copying. Must run
    /// after the agent created the process and before it is started.
    pub async fn attach(
        agent: &Agent,
        cid: &str,
        eid: &str,
        spec: &StdioSpec,
        namespace: &str,
    ) -> Result<ProcessIo, IoError> {
        spec.validate()?;
        let want = spec.agent_stdio();
        let mut loggers = Vec::new();
        let mut logger_pipes: HashMap<Destination, binary::LoggerPipes> = HashMap::new();
        let mut fifos = Vec::new();
        // Start each logging binary once, before anything else can fail late.
        let mut binaries = Vec::new();
        for uri in [&spec.stdout, &spec.stderr] {
            if let Some(d @ Destination::Binary { .. }) = parse_destination(uri)? {
                if !binaries.contains(&d) {
                    binaries.push(d);
                }
            }
        }
        for d in binaries {
            if let Destination::Binary { path, args } = &d {
                let (logger, pipes) = binary::start(path.clone(), args, cid, namespace).await?;
                loggers.push(logger);
                logger_pipes.insert(d.clone(), pipes);
            }
        }
        let out_sink = make_sink(&spec.stdout, StreamKind::Stdout, &logger_pipes, &mut fifos)?;
        let err_sink = if want.stderr {
            make_sink(&spec.stderr, StreamKind::Stderr, &logger_pipes, &mut fifos)?
        } else {
            None
        };
        // The copies own their pipe ends now: drop ours so the logger sees EOF when they end.
        drop(logger_pipes);

        let mut tasks = Vec::new();
        let mut outputs = Vec::new();
        for (kind, sink) in [
            (StreamKind::Stdout, out_sink),
            (StreamKind::Stderr, err_sink),
        ] {
            let Some(sink) = sink else { continue };
            let stream = streams::open(agent, cid, eid, kind).await?;
            outputs.push(tokio::spawn(streams::copy_out(stream, sink)));
        }
        let (stdin_close, closed) = watch::channel(false);
        if want.stdin {
            let path = PathBuf::from(spec.stdin.trim_start_matches("fifo://"));
            let stream = streams::open(agent, cid, eid, StreamKind::Stdin).await?;
            fifos.push((path.clone(), fifo::End::Read));
            let source = async move {
                match fifo::open_reader(path.clone()).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!("opening stdin FIFO {}: {e}", path.display());
                        None
                    }
                }
            };
            tasks.push(tokio::spawn(streams::copy_in(source, stream, closed)));
        }
        let (drained_tx, drained) = watch::channel(false);
        let aborts = outputs.iter().map(JoinHandle::abort_handle).collect();
        tasks.push(tokio::spawn(async move {
            for o in outputs {
                let _ = o.await;
            }
            let _ = drained_tx.send(true);
        }));
        Ok(ProcessIo {
            stdin_close,
            drained,
            rest: std::sync::Mutex::new(Some(Rest {
                tasks,
                aborts,
                loggers,
                fifos,
            })),
        })
    }

    /// CloseIO: the process's stdin gets end-of-file.
    pub fn close_stdin(&self) {
        let _ = self.stdin_close.send(true);
    }

    /// Waits until every output stream reached its end and was written out.
    pub async fn drained(&self) {
        let mut rx = self.drained.clone();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Stops everything (the process is gone or being deleted): stdin is closed, pending FIFO
    /// opens are released, copies are stopped, loggers are given their grace period.
    pub fn close(&self) {
        self.close_stdin();
        let rest = self.rest.lock().ok().and_then(|mut r| r.take());
        let Some(rest) = rest else { return };
        for (path, end) in &rest.fifos {
            fifo::unblock(path, *end);
        }
        // Finished copies are unaffected; unfinished ones (a FIFO reader that never came, a
        // process deleted while running) are stopped.
        for a in &rest.aborts {
            a.abort();
        }
        for t in &rest.tasks {
            t.abort();
        }
        for l in rest.loggers {
            tokio::spawn(l.finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_like_containerd() {
        assert_eq!(parse_destination("").unwrap(), None);
        assert_eq!(
            parse_destination("/run/containerd/fifo/1/t-stdout").unwrap(),
            Some(Destination::Fifo("/run/containerd/fifo/1/t-stdout".into()))
        );
        assert_eq!(
            parse_destination("fifo:///x/y").unwrap(),
            Some(Destination::Fifo("/x/y".into()))
        );
        assert_eq!(
            parse_destination("file:///var/log/c1.log").unwrap(),
            Some(Destination::File("/var/log/c1.log".into()))
        );
        assert_eq!(
            parse_destination("binary:///usr/bin/logger?id=c1&mode=a%20b").unwrap(),
            Some(Destination::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "c1".into(), "mode".into(), "a b".into()]
            })
        );
        for bad in ["relative/path", "file://rel", "http://x/y", "binary://"] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_stdio_follows_terminal_mode() {
        let s = StdioSpec {
            stdin: "/f/in".into(),
            stdout: "/f/out".into(),
            stderr: "/f/err".into(),
            terminal: true,
        };
        let a = s.agent_stdio();
        assert!(a.stdin && a.stdout && !a.stderr && a.terminal);
        let bad_stdin = StdioSpec {
            stdin: "file:///x".into(),
            ..Default::default()
        };
        assert!(bad_stdin.validate().is_err());
    }
}
