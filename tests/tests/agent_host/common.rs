//! What every test here uses: the prerequisites check, the [`Fixture`] (a host-mode agent, a
//! client and a busybox rootfs) with its request helpers, and the checks that nothing was left
//! behind.

use std::path::{Path, PathBuf};

use husk_protocol::agent::api;
use husk_protocol::agent::service::AgentClient;
use husk_tests::agent::{client, ctx, pref, stdio, HostAgent};
use husk_tests::rootfs::{busybox_rootfs, process, spec};

/// Prints to the real stderr, past libtest's output capture, so a skip is seen in `make e2e`.
macro_rules! loud {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The prerequisites; false (after saying why, loudly) when this host lacks them.
fn prerequisites() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let cgroup2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !root || !cgroup2 {
        loud!(
            "\n*** SKIPPED: husk-agent host-mode tests need root ({root}) and a pure cgroup v2 at \
             /sys/fs/cgroup ({cgroup2}); `make e2e` runs them in the test host ***\n"
        );
        return false;
    }
    true
}

pub(crate) struct Fixture {
    pub(crate) agent: HostAgent,
    pub(crate) c: AgentClient,
    pub(crate) rootfs: PathBuf,
    _dir: tempfile::TempDir,
    mounts_before: usize,
}

pub(crate) async fn fixture() -> Option<Fixture> {
    if !prerequisites() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path()).unwrap();
    let agent = HostAgent::start();
    let c = client(&agent.socket).await.unwrap();
    let v = c.check(ctx(), &api::CheckRequest::default()).await.unwrap();
    assert_eq!(v.api_version, 1);
    Some(Fixture {
        agent,
        c,
        rootfs,
        _dir: dir,
        mounts_before: mount_count(),
    })
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

fn husk_cgroups() -> Vec<String> {
    std::fs::read_dir("/sys/fs/cgroup/husk")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether this process tree runs chrooted (its root is not PID 1's).
pub(crate) fn chrooted() -> bool {
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata("/").unwrap();
    match std::fs::metadata("/proc/1/root/") {
        Ok(b) => (a.dev(), a.ino()) != (b.dev(), b.ino()),
        Err(_) => false,
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether `pid` is a husk-agent runner (`husk-agent __husk-runner`).
fn is_spare_runner(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).nth(1) == Some(b"__husk-runner".as_slice()))
        .unwrap_or(false)
}

impl Fixture {
    pub(crate) fn spec(&self, args: &[&str]) -> serde_json::Value {
        spec(&self.rootfs, args, false)
    }

    pub(crate) async fn create(
        &self,
        id: &str,
        spec: &serde_json::Value,
        s: api::Stdio,
    ) -> Result<u32, ttrpc::Error> {
        self.c
            .create_container(
                ctx(),
                &api::CreateContainerRequest {
                    container_id: id.into(),
                    spec_json: serde_json::to_vec(spec).unwrap(),
                    stdio: Some(s).into(),
                    ..Default::default()
                },
            )
            .await
            .map(|r| r.pid)
    }

    pub(crate) async fn remove(&self, id: &str, force: bool) {
        self.c
            .remove_container(
                ctx(),
                &api::RemoveContainerRequest {
                    container_id: id.into(),
                    force,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    pub(crate) async fn exec(
        &self,
        cid: &str,
        eid: &str,
        args: &[&str],
        s: api::Stdio,
    ) -> Result<(), ttrpc::Error> {
        self.c
            .exec_process(
                ctx(),
                &api::ExecProcessRequest {
                    container_id: cid.into(),
                    exec_id: eid.into(),
                    process_json: serde_json::to_vec(&process(args, s.terminal)).unwrap(),
                    stdio: Some(s).into(),
                    ..Default::default()
                },
            )
            .await
            .map(|_| ())
    }

    /// Creates and starts a long-running container (`sleep 1000`).
    pub(crate) async fn sleeper(&self, id: &str) {
        self.create(
            id,
            &self.spec(&["sleep", "1000"]),
            stdio(false, false, false, false),
        )
        .await
        .unwrap();
        self.c.start_process(ctx(), &pref(id, "")).await.unwrap();
    }

    pub(crate) async fn signal(
        &self,
        cid: &str,
        eid: &str,
        sig: i32,
        all: bool,
    ) -> Result<(), ttrpc::Error> {
        self.c
            .signal_process(
                ctx(),
                &api::SignalRequest {
                    container_id: cid.into(),
                    exec_id: eid.into(),
                    signal: sig as u32,
                    all,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ())
    }

    /// Nothing left behind: no container cgroup, no child process, no extra mount.
    pub(crate) fn assert_clean(&self) {
        assert!(
            husk_cgroups().is_empty(),
            "cgroups left: {:?}",
            husk_cgroups()
        );
        // The agent's own spare runner (agent/src/runner/spare.rs: one idle runner, started
        // after a runner was used) is not a container's process; at most one may wait.
        // Two runners finishing together may both start one; the second exits at once.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (spares, kids): (Vec<u32>, Vec<u32>) = children_of(self.agent.pid())
                .into_iter()
                .partition(|p| is_spare_runner(*p));
            assert!(kids.is_empty(), "processes left under the agent: {kids:?}");
            if spares.len() <= 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "more than one spare runner: {spares:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(mount_count(), self.mounts_before, "mounts left behind");
    }
}
