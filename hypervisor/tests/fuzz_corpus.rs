//! Replays the fuzzing corpus on stable: every file of `hypervisor/fuzz/corpus/<target>/` and,
//! when present, `hypervisor/fuzz/artifacts/<target>/` (crashes `make fuzz` saved) goes
//! through the same harness the cargo-fuzz target runs (`husk_hypervisor::fuzzing`), so a
//! fixed crash stays fixed. A failure names the input files that panicked.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use husk_hypervisor::fuzzing;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = inputs(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "no seed corpus for {target} under {}",
        fuzz.display()
    );
    let artifacts = inputs(&fuzz.join("artifacts").join(target));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&artifacts) {
        let data = std::fs::read(file).unwrap();
        let ran = catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, &data)));
        match ran {
            Ok(known) => assert!(known, "unknown fuzz target {target}"),
            Err(_) => failed.push(file.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: inputs that panicked: {failed:#?}"
    );
}

#[test]
fn every_target_has_a_corpus_directory() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for target in fuzzing::TARGETS {
        assert!(corpus.join(target).is_dir(), "missing corpus for {target}");
    }
}

#[test]
fn chain() {
    replay("chain");
}

#[test]
fn vsock_packet() {
    replay("vsock_packet");
}

#[test]
fn vsock_connection() {
    replay("vsock_connection");
}

#[test]
fn balloon() {
    replay("balloon");
}

#[test]
fn net_header() {
    replay("net_header");
}

#[test]
fn fuse_request() {
    replay("fuse_request");
    let _ = std::fs::remove_dir_all(fuzzing::fuse_share());
}

#[test]
fn mmio() {
    replay("mmio");
}

#[test]
fn hybrid_handshake() {
    replay("hybrid_handshake");
}
