//! The containerd config edits on real-shaped configs.

use super::*;

const DEBIAN: &str = include_str!("../../tests/fixtures/debian-default-v2.toml");
const DEFAULT_16: &str = include_str!("../../tests/fixtures/containerd-1.6-default-v2.toml");
const V3: &str = include_str!("../../tests/fixtures/containerd-2.x-v3.toml");
const V1: &str = include_str!("../../tests/fixtures/v1-legacy.toml");
const CFG: &str = "/etc/husk/config.toml";

fn value(text: &str) -> toml::Value {
    toml::from_str(text).unwrap()
}

fn husk_of(text: &str, plugin: &str) -> toml::Value {
    value(text)["plugins"][plugin]["containerd"]["runtimes"]["husk"].clone()
}

#[test]
fn adds_the_v2_handler_to_debians_config_and_keeps_the_rest() {
    let (out, version, what) = register(DEBIAN, CFG, false).unwrap();
    assert_eq!((version, what), (Version::V2, Registered::Added));
    let h = husk_of(&out, "io.containerd.grpc.v1.cri");
    assert_eq!(h["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(h["pod_annotations"][0].as_str(), Some(POD_ANNOTATIONS));
    assert_eq!(h["options"]["ConfigPath"].as_str(), Some(CFG));
    // Everything that was there is still there, byte for byte, in order.
    let kept: Vec<&str> = DEBIAN.lines().collect();
    let mut it = out.lines();
    for line in &kept {
        assert!(
            it.any(|l| l == *line),
            "line {line:?} lost or reordered in:\n{out}"
        );
    }
    assert!(out.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]"));
    assert!(out.contains("# husk's runtime handler"));
    let found = find(&out).unwrap().unwrap();
    assert_eq!(found.version, Version::V2);
    assert_eq!(found.config_path.as_deref(), Some(CFG));
}

#[test]
fn adds_next_to_runc_in_a_full_default_config() {
    let (out, _, what) = register(DEFAULT_16, CFG, false).unwrap();
    assert_eq!(what, Registered::Added);
    let v = value(&out);
    let runtimes = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(
        runtimes["husk"]["runtime_type"].as_str(),
        Some(RUNTIME_TYPE)
    );
    // The husk table sits after runc's, before the next plugin.
    let husk = out.find(".runtimes.husk]").unwrap();
    let runc_opts = out.find(".runtimes.runc.options]").unwrap();
    assert!(husk > runc_opts);
    let without: Vec<&str> = out.lines().filter(|l| !DEFAULT_16.contains(l)).collect();
    assert!(
        without.len() <= 9,
        "only the husk table was added: {without:#?}"
    );
}

#[test]
fn adds_the_v3_handler_and_keeps_comments_and_quoting() {
    let (out, version, what) = register(V3, CFG, false).unwrap();
    assert_eq!((version, what), (Version::V3, Registered::Added));
    let h = husk_of(&out, "io.containerd.cri.v1.runtime");
    assert_eq!(h["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert!(out.contains("enable_selinux = false # keep this comment"));
    assert!(out.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]"));
    assert!(out.starts_with("# containerd 2.x config"));
    assert!(value(&out)["plugins"]
        .get("io.containerd.grpc.v1.cri")
        .is_none());
}

#[test]
fn a_second_register_changes_nothing() {
    for text in [DEBIAN, DEFAULT_16, V3] {
        let (once, _, _) = register(text, CFG, false).unwrap();
        let (twice, _, what) = register(&once, CFG, false).unwrap();
        assert_eq!(what, Registered::AlreadyPresent);
        assert_eq!(twice, once);
    }
}

#[test]
fn a_hand_written_equivalent_handler_counts_as_present() {
    let text = format!(
        "{DEBIAN}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n\
         # mine\nruntime_type = \"io.containerd.husk.v2\"\npod_annotations = ['io.husk.*']\n\
         privileged_without_host_devices = true\noptions = {{ ConfigPath = \"{CFG}\" }}\n"
    );
    let (out, _, what) = register(&text, CFG, false).unwrap();
    assert_eq!(what, Registered::AlreadyPresent);
    assert_eq!(out, text);
}

#[test]
fn a_different_handler_is_a_conflict_unless_forced() {
    let (mine, _, _) = register(DEBIAN, "/somewhere/else.toml", false).unwrap();
    let err = register(&mine, CFG, false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ContainerdConfigError::Conflict { .. }));
    assert!(
        msg.contains("/somewhere/else.toml") && msg.contains("--force"),
        "{msg}"
    );
    let (forced, _, what) = register(&mine, CFG, true).unwrap();
    assert_eq!(what, Registered::Replaced);
    assert_eq!(
        find(&forced).unwrap().unwrap().config_path.as_deref(),
        Some(CFG)
    );
}

#[test]
fn version_1_is_refused_with_the_migration_command() {
    for text in [V1, "version = 1\n", ""] {
        let err = register(text, CFG, false).unwrap_err();
        assert!(matches!(err, ContainerdConfigError::Version1), "{err}");
        assert!(err.to_string().contains("containerd config migrate"));
    }
    let err = register("version = 7\n", CFG, false).unwrap_err();
    assert!(err
        .to_string()
        .contains("unsupported containerd config version 7"));
    let err = register("version = [\n", CFG, false).unwrap_err();
    assert!(matches!(err, ContainerdConfigError::Parse(_)));
}

#[test]
fn a_non_table_on_the_path_is_named() {
    let err = register("version = 2\nplugins = 3\n", CFG, false).unwrap_err();
    assert!(
        err.to_string().contains("`plugins` is not a table"),
        "{err}"
    );
}

#[test]
fn minimal_config_gets_a_handler() {
    let (out, version, _) = register(MINIMAL_V2, CFG, false).unwrap();
    assert_eq!(version, Version::V2);
    assert!(find(&out).unwrap().is_some());
}

#[test]
fn unregister_removes_only_the_husk_table() {
    for text in [DEBIAN, DEFAULT_16, V3] {
        let (with, _, _) = register(text, CFG, false).unwrap();
        let (without, removed) = unregister(&with).unwrap();
        assert!(removed);
        assert_eq!(find(&without).unwrap(), None);
        assert_eq!(value(&without), value(text), "same meaning after removal");
        let (again, removed) = unregister(&without).unwrap();
        assert!(!removed);
        assert_eq!(again, without);
    }
}

#[test]
fn find_sees_nothing_in_a_fresh_config() {
    assert_eq!(find(DEBIAN).unwrap(), None);
    assert_eq!(find(V3).unwrap(), None);
    assert_eq!(version(V3).unwrap(), Version::V3);
}

#[test]
fn the_snippets_in_runtimeclass_config_are_what_install_writes() {
    for (snippet, base) in [
        (
            include_str!("../../../runtimeclass/config/containerd-1.6-1.7.toml"),
            "version = 2\n",
        ),
        (
            include_str!("../../../runtimeclass/config/containerd-2.x.toml"),
            "version = 3\n",
        ),
    ] {
        let (out, _, _) = register(base, CFG, false).unwrap();
        let table = out.strip_prefix(base).unwrap();
        assert!(snippet.ends_with(table), "snippet differs from:\n{table}");
    }
}

#[test]
fn a_stock_containerd_2_3_config_version_4_gets_the_handler_where_2_3_reads_it() {
    let stock = include_str!("../../tests/fixtures/containerd-2.3-default-v4.toml");
    let (out, version, what) = register(stock, CFG, false).unwrap();
    assert_eq!((version, what), (Version::V4, Registered::Added));
    let h = husk_of(&out, "io.containerd.cri.v1.runtime");
    assert_eq!(h["runtime_type"].as_str(), Some(RUNTIME_TYPE));
    assert_eq!(find(&out).unwrap().unwrap().version, Version::V4);
    let (back, removed) = unregister(&out).unwrap();
    assert!(removed);
    assert_eq!(value(&back), value(stock), "same meaning after removal");
}
