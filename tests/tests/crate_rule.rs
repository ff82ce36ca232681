//! The crate rule (docs/DESIGN.md): one crate per process boundary, and `husk-protocol` the only
//! crate they share that carries what crosses a boundary. The shim, the agent and the VMM never
//! depend on one another; besides `protocol` they may share only leaf libraries (crates that
//! depend on no husk crate: `husk-rtnl`); `protocol` depends on none of husk's crates; the `husk`
//! CLI reaches the node contract through `protocol`, never through the shim. Read from
//! `cargo metadata`; runs with plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
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
    // Shared libraries that cross no boundary: each must stay a leaf.
    let leaves = ["husk-rtnl"];
    let mut broken = Vec::new();
    for leaf in leaves {
        assert!(edges.contains_key(leaf), "no package {leaf} in {edges:?}");
        for to in &edges[leaf] {
            broken.push(format!("{leaf} (a leaf library) -> {to}"));
        }
    }
    for from in processes {
        for to in &edges[from] {
            if to != "husk-protocol" && !leaves.contains(&to.as_str()) {
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

/// The first path segment after each `crate::` in `text` (comments removed): the top-level
/// modules a file names, through `crate::a::…` and `crate::{a::…, b}` alike.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(c, _)| c))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // The first segment of each item at the group's top level.
        let (mut depth, mut item_start) = (0usize, true);
        for (i, c) in group.char_indices() {
            if item_start && !c.is_whitespace() {
                out.insert(ident(&group[i..]));
                item_start = false;
            }
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                _ => {}
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// Each top-level module of the crate whose sources are under `src`, with the other top-level
/// modules it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = vec![src.to_path_buf()];
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = first.trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let names = crate_paths(&std::fs::read_to_string(&p).unwrap());
        graph
            .entry(top.clone())
            .or_default()
            .extend(names.into_iter().filter(|n| *n != top));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// The pairs of modules that reach each other in `graph`.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut pairs = Vec::new();
    for (a, ra) in &reaches {
        for b in ra {
            if *a < b && reaches.get(b).is_some_and(|rb| rb.contains(*a)) {
                pairs.push(((*a).clone(), b.clone()));
            }
        }
    }
    pairs
}

#[test]
fn crate_paths_reads_plain_and_grouped_imports() {
    let text =
        "use crate::a::B;\nuse crate::{c::{D, e::F}, g};\n// crate::comment\nx(crate::h::i())";
    let got: Vec<String> = crate_paths(text).into_iter().collect();
    assert_eq!(got, ["a", "c", "g", "h"]);
}

#[test]
fn no_crate_has_an_import_cycle_between_its_top_level_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found = Vec::new();
    for krate in [
        "protocol",
        "rtnl",
        "shim",
        "agent",
        "hypervisor",
        "cli",
        "image-builder",
        "tests",
    ] {
        let src = root.join(krate).join("src");
        assert!(src.is_dir(), "{} is missing", src.display());
        let graph = module_graph(&src);
        assert!(
            graph.len() > 1 || ["image-builder", "rtnl"].contains(&krate),
            "{krate}: no modules read"
        );
        for (a, b) in cycles(&graph) {
            found.push(format!("{krate}: {a} <-> {b}"));
        }
    }
    assert!(
        found.is_empty(),
        "top-level modules that import each other (docs/DESIGN.md, the house rules): {found:?}"
    );
}

/// The versions of package `name` in the workspace's Cargo.lock.
fn locked_versions(lock: &str, name: &str) -> Vec<String> {
    let mut versions = Vec::new();
    for package in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            package.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_string())
            })
        };
        if field("name ").as_deref() == Some(name) {
            versions.extend(field("version "));
        }
    }
    versions
}

#[test]
fn one_vm_memory_in_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let found = locked_versions(&lock, "vm-memory");
    assert_eq!(
        found.len(),
        1,
        "guest memory types cross kvm-ioctls, virtio-queue and linux-loader: exactly one \
         vm-memory may be in Cargo.lock (protocols.md), found {found:?}"
    );
    assert_eq!(
        locked_versions("[[package]]\nname = \"a\"\nversion = \"1.0.0\"\n[[package]]\nname = \"a\"\nversion = \"2.0.0\"\n", "a"),
        ["1.0.0", "2.0.0"]
    );
}
