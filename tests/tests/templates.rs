//! VM templates through containerd (issue 17, items 2 and 3), with `templates = true`.
//!
//! - The first pod of a shape boots and a template is made in the background; pods after it
//!   restore the template, and each is its own: a different `/proc/sys/kernel/random/uuid`,
//!   different `/dev/urandom` bytes, a different boot id, the host's wall clock.
//! - A corrupt template, and a template directory too small for a template (the build fails
//!   writing it), both leave pods booting cold, each with nothing left behind: no builder VM,
//!   no half-written template, no lock, no builder sandbox.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_tests::containerd::{template_dir, Containerd, HuskArtifacts, HuskSettings, HUSK};
use husk_tests::oci_image::BUSYBOX_REF;

/// Bound of one ctr step (as in shim_ctr).
const T: Duration = Duration::from_secs(180);
/// How long a background template build may take in the nested test host.
const BUILD: Duration = Duration::from_secs(300);

fn settings() -> HuskSettings {
    let artifacts = HuskArtifacts::from_env().unwrap_or_else(|e| panic!("{e}"));
    let mut s = HuskSettings::new(artifacts);
    s.templates = true;
    s
}

fn templates_of(c: &Containerd) -> PathBuf {
    template_dir(&c.base().join("hs"))
}

/// What a container saw of its VM's identity.
#[derive(Debug)]
struct Identity {
    uuid: String,
    urandom: String,
    boot_id: String,
    clock: u64,
}

const SCRIPT: &str = "cat /proc/sys/kernel/random/uuid; \
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
    cat /proc/sys/kernel/random/boot_id; date +%s";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn identity(c: &Containerd, id: &str) -> Identity {
    let before = now();
    let out = c.ctr(
        &[
            "run",
            "--rm",
            "--runtime",
            HUSK,
            BUSYBOX_REF,
            id,
            "sh",
            "-c",
            SCRIPT,
        ],
        None,
        T,
    );
    let after = now();
    assert_eq!(out.code, 0, "{id}: {out}\n{}", c.log_tail(80));
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 4, "{id}: {:?}", out.stdout);
    let clock: u64 = lines[3].parse().unwrap();
    // The container ran between `before` and `after`; a second of slack for rounding.
    assert!(
        (before.saturating_sub(1)..=after + 1).contains(&clock),
        "{id}: the guest's clock says {clock}, the host's was {before}..{after}"
    );
    Identity {
        uuid: lines[0].into(),
        urandom: lines[1].into(),
        boot_id: lines[2].into(),
        clock,
    }
}

/// Waits until the shim logged, after `from`, either line; returns the log since `from`.
fn wait_log(c: &Containerd, from: u64, lines: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = c.log_since(from);
        if lines.iter().any(|l| log.contains(l)) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "none of {lines:?} in the log within {limit:?}:\n{}",
            c.log_tail(80)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until a complete template (its `template.json` written last, then renamed into
/// place) is in `dir` and its state file is not `unlike`; returns its directory. Polls the
/// file system: a background build outlives the pod's shim connection, after which containerd
/// no longer shows the shim's log lines.
fn wait_template(dir: &Path, unlike: Option<&[u8]>) -> PathBuf {
    let deadline = Instant::now() + BUILD;
    loop {
        for name in entries(dir) {
            let t = dir.join(&name);
            let state = std::fs::read(t.join("state")).unwrap_or_default();
            if !name.starts_with('.')
                && t.join("template.json").exists()
                && Some(state.as_slice()) != unlike
            {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no template in {} within {BUILD:?}: {:?}",
            dir.display(),
            entries(dir)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The names in the template directory.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// husk shims and VMMs still running, as `pid program`, found by their executables' names
/// (`comm` is cut at 15 bytes, which drops the shim's "husk").
fn husk_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let exe = exe.to_string_lossy();
        let name = if comm.trim() == "husk-vmm" {
            "husk-vmm"
        } else if exe.contains("containerd-shim-husk-v2") {
            "containerd-shim-husk-v2"
        } else {
            continue;
        };
        out.push(format!("{} {name}", e.file_name().to_string_lossy()));
    }
    out
}

/// Nothing of a template build is left: no builder VM, no lock or half-written template, no
/// builder sandbox under the state directory. A pod's shim outlives its pod until its
/// background build ends (the build is done, or failed and cleaned up), so this first waits
/// for every husk shim and VMM to exit: checking while a build is still starting (its lock
/// taken, its VM not yet spawned) would race it.
fn nothing_left_of_builds(c: &Containerd) {
    let deadline = Instant::now() + BUILD;
    while !husk_processes().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        husk_processes(),
        Vec::<String>::new(),
        "husk shims or VMMs left after {BUILD:?}"
    );
    let stray: Vec<String> = entries(&templates_of(c))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "build leftovers: {stray:?}");
    let sandboxes: Vec<String> = entries(&c.base().join("hs"))
        .into_iter()
        .filter(|n| n.starts_with("template-"))
        .collect();
    assert!(
        sandboxes.is_empty(),
        "builder sandboxes left: {sandboxes:?}"
    );
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn pods_restored_from_one_template_are_each_their_own() {
    husk_tests::e2e::require();
    let c = Containerd::start(Some(&settings())).unwrap();
    c.import_busybox().unwrap();
    let first = identity(&c, "tpl-first");
    wait_template(&templates_of(&c), None);
    nothing_left_of_builds(&c);
    let made = entries(&templates_of(&c));
    assert_eq!(made.len(), 1, "one template: {made:?}");

    let from = c.log_len();
    let a = identity(&c, "tpl-a");
    let b = identity(&c, "tpl-b");
    let log = c.log_since(from);
    assert_eq!(
        log.matches("restored from a template pid=").count(),
        2,
        "both pods restored the template:\n{log}"
    );
    eprintln!("cold: {first:?}\nrestored: {a:?}\nrestored: {b:?}");
    assert_ne!(a.uuid, b.uuid, "uuids");
    assert_ne!(a.urandom, b.urandom, "/dev/urandom");
    assert_ne!(a.boot_id, b.boot_id, "boot ids");
    assert!(
        ![&a.boot_id, &b.boot_id].contains(&&first.boot_id),
        "a restored pod's boot id is not the cold pod's"
    );
    assert!(a.clock >= first.clock && b.clock >= a.clock);
    nothing_left_of_builds(&c);
}

#[test]
#[ignore = "end-to-end: needs hardware KVM (test host), containerd, husk-vmm, the agent image; run with `make e2e`"]
fn a_corrupt_template_or_no_room_for_one_means_a_cold_boot_and_nothing_left() {
    husk_tests::e2e::require();
    let c = Containerd::start(Some(&settings())).unwrap();
    // A step that fails because the pod's VM was lost to the nested host's known fault says so
    // on its first line (guest_loss::naming), so the e2e rule can tell it from a product failure.
    c.naming_guest_loss(|| {
        c.import_busybox().unwrap();
        let dir = templates_of(&c);

        // A template whose state file was damaged after it was made.
        identity(&c, "tpl-make");
        let made = wait_template(&dir, None);
        nothing_left_of_builds(&c);
        let state = made.join("state");
        let mut bytes = std::fs::read(&state).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&state, &bytes).unwrap();
        let from = c.log_len();
        identity(&c, "tpl-corrupt");
        let log = wait_log(&c, from, &["restoring the template failed"], T);
        assert!(
            log.contains("corrupt snapshot"),
            "husk-vmm named the cause:\n{log}"
        );
        // The broken one went and the pod's shape got a fresh template.
        wait_template(&dir, Some(&bytes));
        nothing_left_of_builds(&c);
        assert_eq!(entries(&dir).len(), 1, "{:?}", entries(&dir));

        // No room: the template directory is a 4 MiB file system.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let _small = SmallFs::mount(&dir);
        for id in ["tpl-full", "tpl-full-again"] {
            let from = c.log_len();
            identity(&c, id);
            // The build fails writing the memory file; its builder VM goes.
            nothing_left_of_builds(&c);
            assert!(entries(&dir).is_empty(), "{id}: {:?}", entries(&dir));
            let log = c.log_since(from);
            assert!(
                !log.contains("making the template") || log.contains("No space left on device"),
                "{id}: the build failed for another reason:\n{log}"
            );
        }
    });
}

/// A 4 MiB tmpfs over a directory, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path) -> SmallFs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "husk-tpl-full"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a small tmpfs on {}", dir.display());
        SmallFs(dir.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
