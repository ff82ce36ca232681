//! The containerd-shim `Shim` implementation: the `delete` action and the daemon (task
//! service, event forwarding, waiting for the exit signal). `start` is handled before the crate
//! runs (see [`crate::start`]), so its output stays exactly the address.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};

use crate::events::{self, Events};
use crate::sandbox::Sandbox;
use crate::task::TaskService;
use crate::vm::VmmBooter;
use crate::{cleanup, config, logging};

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";

/// The shim process.
pub struct HuskShim {
    id: String,
    namespace: String,
    address: String,
    socket: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
    events: Mutex<Option<Events>>,
}

impl std::fmt::Debug for HuskShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HuskShim")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl containerd_shim::Shim for HuskShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let bundle = if args.bundle.is_empty() {
            cwd.clone()
        } else {
            PathBuf::from(&args.bundle)
        };
        match args.action.as_str() {
            "" => {
                let level = if args.debug {
                    "debug".to_string()
                } else {
                    config::load(None)
                        .map(|l| l.config.log_level)
                        .unwrap_or_else(|_| "info".into())
                };
                logging::init_daemon(&cwd, &level);
            }
            "delete" => logging::init_stderr(),
            _ => {}
        }
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
            events: Mutex::new(None),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // main() handles `start` itself; this path is only reached if that ever changes.
        let flags = Flags {
            id: opts.id,
            namespace: opts.namespace,
            address: opts.address,
            debug: opts.debug,
            ..Default::default()
        };
        crate::start::start(&flags, &self.bundle).map_err(containerd_shim::Error::Other)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let (address, namespace) = (self.address.clone(), self.namespace.clone());
        let bundle = self.bundle.clone();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || {
            cleanup::delete(&bundle, &id, |sandbox| {
                containerd_shim::socket_address(&address, &namespace, sandbox)
            })
        })
        .await
        .map_err(|e| containerd_shim::Error::Other(e.to_string()))
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        let events = self.events.lock().ok().and_then(|e| e.clone());
        if let Some(events) = events {
            events.flush(Duration::from_secs(3)).await;
        }
        tracing::info!("shim exiting");
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let (events, rx) = Events::channel();
        tokio::spawn(events::forward(
            publisher.address.clone(),
            self.namespace.clone(),
            rx,
        ));
        drop(publisher);
        if let Ok(mut e) = self.events.lock() {
            *e = Some(events.clone());
        }
        let socket = (!self.socket.is_empty())
            .then(|| PathBuf::from(self.socket.trim_start_matches("unix://")));
        let booter = Arc::new(VmmBooter {
            bindir: config::shim_bindir(),
        });
        tracing::info!(
            id = self.id.as_str(),
            namespace = self.namespace.as_str(),
            "shim serving"
        );
        TaskService {
            sandbox: Arc::new(Sandbox::new(
                &self.id,
                &self.namespace,
                socket,
                events,
                booter,
                self.exit.clone(),
            )),
        }
    }
}
