//! The pod's cgroup on a fake hierarchy (a temporary directory), and, as root, on this host's
//! real one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn fake_unified() -> (tempfile::TempDir, Hierarchy) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("cgroup.subtree_control"), "cpu\n").unwrap();
    let h = Hierarchy::Unified(dir.path().to_path_buf());
    (dir, h)
}

/// The parents husk made (what it made that is not a leaf).
fn parents_made(cg: &PodCgroup) -> Vec<PathBuf> {
    cg.made
        .iter()
        .filter(|d| !cg.leaves.contains(d))
        .cloned()
        .collect()
}

#[test]
fn a_path_is_made_with_its_parents_and_the_controllers_enabled_above_it() {
    let (dir, h) = fake_unified();
    std::fs::create_dir(dir.path().join("kubepods")).unwrap();
    let cg = PodCgroup::create(&h, Path::new("kubepods/pod1/sb")).unwrap();
    let leaf = dir.path().join("kubepods/pod1/sb");
    assert!(leaf.is_dir());
    assert_eq!(cg.leaves(), std::slice::from_ref(&leaf));
    // Only what was missing is enabled, and only what the parent offers.
    let root_control = std::fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap();
    assert_eq!(root_control, "+memory +pids");
    // The existing parent is not husk's to remove; the one it made is, and the leaf.
    let record = dir.path().join("record");
    cg.record(&record).unwrap();
    let back = PodCgroup::recorded(&record).unwrap();
    assert_eq!(back.leaves, vec![leaf.clone()]);
    assert_eq!(parents_made(&back), vec![dir.path().join("kubepods/pod1")]);
    assert!(back.remove(Duration::from_millis(100)).is_empty());
    assert!(!leaf.exists());
    assert!(!dir.path().join("kubepods/pod1").exists());
    assert!(dir.path().join("kubepods").exists());
}

#[test]
fn a_parent_another_pod_still_uses_stays() {
    let (dir, h) = fake_unified();
    let a = PodCgroup::create(&h, Path::new("husk/a")).unwrap();
    let _b = PodCgroup::create(&h, Path::new("husk/b")).unwrap();
    assert!(a.remove(Duration::from_millis(100)).is_empty());
    assert!(!dir.path().join("husk/a").exists());
    assert!(dir.path().join("husk/b").exists(), "b's parent was removed");
}

#[test]
fn the_tightest_memory_limit_above_the_leaf_counts() {
    let (dir, h) = fake_unified();
    let cg = PodCgroup::create(&h, Path::new("kubepods/pod1/sb")).unwrap();
    assert_eq!(cg.memory_limit(), None);
    std::fs::write(dir.path().join("kubepods/memory.max"), "1073741824\n").unwrap();
    std::fs::write(dir.path().join("kubepods/pod1/memory.max"), "max\n").unwrap();
    assert_eq!(cg.memory_limit(), Some(1 << 30));
    std::fs::write(dir.path().join("kubepods/pod1/memory.max"), "335544320\n").unwrap();
    assert_eq!(cg.memory_limit(), Some(320 << 20));
}

#[test]
fn recorded_ignores_relative_and_escaping_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r");
    std::fs::write(
        &f,
        "leaf /sys/fs/cgroup/a\nleaf rel/b\nmade /sys/fs/cgroup/../etc\nbogus\nmade /sys/fs/cgroup/p\n",
    )
    .unwrap();
    let cg = PodCgroup::recorded(&f).unwrap();
    assert_eq!(cg.leaves, vec![PathBuf::from("/sys/fs/cgroup/a")]);
    assert_eq!(parents_made(&cg), vec![PathBuf::from("/sys/fs/cgroup/p")]);
    assert!(PodCgroup::recorded(&dir.path().join("none")).is_none());
}

#[test]
fn the_vm_fits_the_pods_memory_limit_or_is_refused_by_name() {
    let mib = |n: u64| Some(n << 20);
    // No limit, or room enough: as asked.
    assert_eq!(fit_memory(256, None, None, 64), Ok(256));
    assert_eq!(fit_memory(256, mib(288), None, 64), Ok(256));
    // husk's own choice shrinks to the room left after husk-vmm's share.
    assert_eq!(fit_memory(256, mib(224), None, 64), Ok(192));
    // An explicit size is never shrunk.
    let e = fit_memory(256, mib(224), Some("io.husk.memory"), 64).unwrap_err();
    assert!(e.contains("io.husk.memory = 256 MiB"), "{e}");
    assert!(e.contains("224 MiB"), "{e}");
    // A limit too small for any VM names what to raise.
    let e = fit_memory(256, mib(80), None, 64).unwrap_err();
    assert!(e.contains("overhead.podFixed.memory"), "{e}");
}

#[test]
fn a_parent_that_cannot_hand_down_controllers_does_not_fail_the_pod() {
    let (dir, h) = fake_unified();
    // Writing its subtree_control fails (here: it is a directory; in a real tree: EBUSY).
    std::fs::create_dir(dir.path().join("busy")).unwrap();
    std::fs::write(dir.path().join("busy/cgroup.controllers"), "memory\n").unwrap();
    std::fs::create_dir(dir.path().join("busy/cgroup.subtree_control")).unwrap();
    let cg = PodCgroup::create(&h, Path::new("busy/sb")).unwrap();
    assert!(dir.path().join("busy/sb").is_dir());
    assert!(cg.remove(Duration::from_millis(100)).is_empty());
}

#[test]
fn a_leaf_that_already_existed_is_joined_but_never_swept_or_removed() {
    let (dir, h) = fake_unified();
    let theirs = dir.path().join("system.slice/theirs.scope");
    std::fs::create_dir_all(&theirs).unwrap();
    let cg = PodCgroup::create(&h, Path::new("system.slice/theirs.scope")).unwrap();
    assert_eq!(cg.leaves(), std::slice::from_ref(&theirs));
    let record = dir.path().join("record");
    cg.record(&record).unwrap();
    let back = PodCgroup::recorded(&record).unwrap();
    assert!(back.remove(Duration::from_millis(100)).is_empty());
    assert!(theirs.is_dir(), "someone else's cgroup was removed");
}
