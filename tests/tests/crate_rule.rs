//! The crate rule (docs/DESIGN.md): one crate per process boundary, and `husk-protocol` the only
//! crate they share. The shim, the agent and the VMM never depend on one another; `protocol`
//! depends on none of husk's crates; the `husk` CLI reaches the node contract through
//! `protocol`, never through the shim. Read from `cargo metadata`; runs with plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace package's dependencies on other workspace packages (normal, build and dev).
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|d| ours.contains(d))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn process_crates_share_only_protocol() {
    let edges = workspace_edges();
    let processes = ["husk-shim", "husk-agent", "husk-hypervisor"];
    for p in processes.iter().chain(["husk-protocol", "husk-cli"].iter()) {
        assert!(edges.contains_key(*p), "no package {p} in {edges:?}");
    }
    let mut broken = Vec::new();
    for from in processes {
        for to in &edges[from] {
            if to != "husk-protocol" {
                broken.push(format!("{from} -> {to}"));
            }
        }
    }
    for to in &edges["husk-protocol"] {
        broken.push(format!("husk-protocol -> {to}"));
    }
    for to in &edges["husk-cli"] {
        if processes.contains(&to.as_str()) {
            broken.push(format!("husk-cli -> {to}"));
        }
    }
    assert!(
        broken.is_empty(),
        "the crate rule is broken (docs/DESIGN.md): {broken:?}"
    );
}
