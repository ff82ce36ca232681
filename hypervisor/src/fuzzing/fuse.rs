//! `fuse_request`: FUSE requests as the virtio-fs device receives them: chains on its
//! high-priority and request queues through [`FsQueues`] and fuse-backend-rs's passthrough
//! server, over a scratch directory.
//!
//! The server runs, as in the device, on a worker thread of its own, which is also confined
//! to the scratch directory with `chroot` (when the process may): the fuzzer sends every
//! request the server has (UNLINK, RENAME, WRITE with any node id and name), so even a way out
//! of the share could only reach the scratch directory, never the host running the fuzzer.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use husk_protocol::vm_config::FsCache;

use super::{memory, queue, Input, NullInterrupt, QUEUE_BASE, QUEUE_SPAN};
use crate::devices::virtio::fs::backend::{new_server, private_fs, FsServer};
use crate::devices::virtio::fs::handler::{FsQueues, BATCH};
use crate::devices::virtio::fs::{HIPRIO_QUEUE, REQUEST_QUEUE};

/// One input with its server, and where to say it is done.
type Job = (Vec<u8>, FsServer, mpsc::SyncSender<()>);

/// The worker thread that serves every input, and the share's root as it sees it.
#[derive(Debug)]
struct Worker {
    jobs: Mutex<mpsc::Sender<Job>>,
    root: PathBuf,
}

/// The scratch directory served to the fuzzer (created on first use, per process).
pub fn fuse_share() -> &'static Path {
    static SHARE: OnceLock<PathBuf> = OnceLock::new();
    SHARE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("husk-fuzz-fs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("sub"));
        let _ = std::fs::write(dir.join("hello.txt"), b"hello, fuzzer\n");
        // A crash on the chrooted worker thread makes libFuzzer write the input at its
        // artifact prefix as that thread sees it: inside the share (scripts/fuzz.sh collects it).
        for prefix in
            std::env::args().filter_map(|a| a.strip_prefix("-artifact_prefix=").map(String::from))
        {
            let _ = std::fs::create_dir_all(dir.join(prefix.trim_start_matches('/')));
        }
        dir
    })
}

fn worker() -> &'static Worker {
    static WORKER: OnceLock<Worker> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let (root_tx, root_rx) = mpsc::sync_channel(1);
        let share = fuse_share();
        std::thread::spawn(move || {
            // Only a thread with a private fs_struct may chroot without moving the whole
            // process (libFuzzer writes its corpus by relative path).
            // chroot first: it needs CAP_SYS_CHROOT, which the file server's set lacks.
            let root = match private_fs() {
                Ok(()) if std::os::unix::fs::chroot(share).is_ok() => {
                    let _ = std::env::set_current_dir("/");
                    PathBuf::from("/")
                }
                _ => share.to_path_buf(),
            };
            let _ = crate::caps::raise_file_server();
            let _ = root_tx.send(root);
            while let Ok((data, server, done)) = rx.recv() {
                serve(&data, server);
                let _ = done.send(());
            }
        });
        let root = root_rx.recv().unwrap_or_else(|_| share.to_path_buf());
        Worker {
            jobs: Mutex::new(tx),
            root,
        }
    })
}

/// Input: `u8` cache policy (mod 3), the high-priority queue, the request queue, guest RAM.
/// A useful input starts its request queue with FUSE INIT.
pub fn fuse_request(data: &[u8]) {
    let w = worker();
    let cache = match data.first().map_or(0, |b| b % 3) {
        0 => FsCache::Never,
        1 => FsCache::Auto,
        _ => FsCache::Always,
    };
    // Made here, outside the chroot: the server opens /proc/self/fd when it is created and
    // its root (the share, seen from the worker) only at FUSE INIT.
    let Ok(server) = new_server(&w.root, cache) else {
        return;
    };
    let (done, wait) = mpsc::sync_channel(1);
    let sent = w
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((data.to_vec(), server, done));
    if sent.is_err() || wait.recv().is_err() {
        panic!("the FUSE worker thread died: it panicked on this or an earlier input");
    }
}

fn serve(data: &[u8], server: FsServer) {
    let mut input = Input::new(data);
    let _cache = input.u8();
    let Some(mem) = memory() else { return };
    let Some(hq) = queue(&mem, &mut input, QUEUE_BASE) else {
        return;
    };
    let Some(rq) = queue(&mem, &mut input, QUEUE_BASE + QUEUE_SPAN) else {
        return;
    };
    input.fill_ram(&mem);
    let mut dev = FsQueues::new(mem, [hq, rq], Arc::new(NullInterrupt), server);
    for index in [REQUEST_QUEUE, HIPRIO_QUEUE, REQUEST_QUEUE] {
        let run = dev.process_queue(index);
        assert!(run.served <= BATCH);
    }
}
