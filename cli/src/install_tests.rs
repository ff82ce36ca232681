//! install + uninstall with a fake command runner (the file-level flows are in
//! cli/tests/install.rs, through the binary).

use std::path::{Path, PathBuf};

use crate::artifacts::Sources;
use crate::commands::fake::Recorder;
use crate::containerd;
use crate::husk_config::husk_config_text;
use crate::install::*;
use crate::paths::{Layout, Root};
use crate::paths::{CLI, INITRD, KERNEL, SHIM, VMM};
use crate::uninstall::{uninstall, UninstallOptions};

struct Env {
    _t: tempfile::TempDir,
    root: PathBuf,
    artifacts: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("host");
    let artifacts = t.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
    for n in [SHIM, VMM, CLI, KERNEL, INITRD] {
        std::fs::write(artifacts.join(n), format!("fake {n}")).unwrap();
    }
    std::fs::write(root.join("etc/containerd/config.toml"), "version = 2\n").unwrap();
    Env {
        root,
        artifacts,
        _t: t,
    }
}

fn opts(e: &Env) -> InstallOptions {
    InstallOptions {
        root: Root::new(&e.root),
        prefix: "/opt/husk".into(),
        containerd_config: "/etc/containerd/config.toml".into(),
        husk_config: "/etc/husk/config.toml".into(),
        link_dir: "/usr/local/bin".into(),
        sources: Sources {
            dir: Some(e.artifacts.clone()),
            exe: None,
            kernel_env: None,
        },
        force: false,
        restart_containerd: true,
        label_node: Some("node-1".into()),
    }
}

fn un(e: &Env) -> UninstallOptions {
    UninstallOptions {
        root: Root::new(&e.root),
        prefix: "/opt/husk".into(),
        restart_containerd: true,
    }
}

#[test]
fn labels_restarts_through_nsenter_and_uninstall_reverses_both() {
    let e = env();
    let r = Recorder::default();
    let rep = install(&opts(&e), &r).unwrap();
    assert!(rep.changed);
    assert_eq!(
        *r.ran.borrow(),
        [
            "nsenter --target 1 --mount -- systemctl restart containerd",
            "kubectl label node node-1 husk.io/runtime=true --overwrite",
        ]
    );
    // Again: the config is unchanged, so no restart; the label is re-applied.
    let r2 = Recorder::default();
    let rep = install(&opts(&e), &r2).unwrap();
    assert!(!rep.changed, "{:#?}", rep.lines);
    assert_eq!(
        *r2.ran.borrow(),
        ["kubectl label node node-1 husk.io/runtime=true --overwrite"]
    );
    let r3 = Recorder::default();
    uninstall(&un(&e), &r3).unwrap();
    assert_eq!(
        *r3.ran.borrow(),
        [
            "kubectl label node node-1 husk.io/runtime-",
            "nsenter --target 1 --mount -- systemctl restart containerd",
        ]
    );
}

#[test]
fn a_failed_label_is_an_error_but_the_record_lets_uninstall_undo_the_rest() {
    let e = env();
    let r = Recorder {
        fail: vec!["kubectl"],
        ..Recorder::default()
    };
    let err = install(&opts(&e), &r).unwrap_err().to_string();
    assert!(
        err.contains("kubectl label node node-1") && err.contains("no cluster"),
        "{err}"
    );
    assert!(e.root.join("opt/husk/share/husk/install.json").exists());
    let rep = uninstall(&un(&e), &Recorder::default()).unwrap();
    assert!(rep.changed);
    assert_eq!(
        std::fs::read_to_string(e.root.join("etc/containerd/config.toml")).unwrap(),
        "version = 2\n"
    );
    assert!(!e.root.join("opt").exists());
}

#[test]
fn nothing_changes_when_an_input_is_bad() {
    let e = env();
    std::fs::write(e.root.join("etc/containerd/config.toml"), "[plugins.cri]\n").unwrap();
    let r = Recorder::default();
    let err = install(&opts(&e), &r).unwrap_err().to_string();
    assert!(err.contains("containerd config migrate"), "{err}");
    assert!(!e.root.join("opt").exists());
    assert!(!e.root.join("etc/husk").exists());
    assert!(r.ran.borrow().is_empty());

    let e = env();
    std::fs::remove_file(e.artifacts.join(KERNEL)).unwrap();
    let err = install(&opts(&e), &r).unwrap_err().to_string();
    assert!(err.contains("vmlinux (looked in"), "{err}");
    assert!(!e.root.join("opt").exists());
}

#[test]
fn relative_paths_are_refused_under_a_root() {
    let e = env();
    let mut o = opts(&e);
    o.prefix = "opt/husk".into();
    let err = install(&o, &Recorder::default()).unwrap_err().to_string();
    assert!(err.contains("must be an absolute path"), "{err}");
}

#[test]
fn the_written_husk_config_is_valid_for_the_shim() {
    let text = husk_config_text(&Layout {
        prefix: "/opt/husk".into(),
    });
    let c = husk_protocol::config::HuskConfig::parse(&text, Path::new("x")).unwrap();
    assert_eq!(c.vmm, Some(PathBuf::from("/opt/husk/bin/husk-vmm")));
    assert_eq!(
        c.kernel,
        Some(PathBuf::from("/opt/husk/share/husk/vmlinux"))
    );
    assert_eq!(
        c.initramfs,
        Some(PathBuf::from("/opt/husk/share/husk/husk-initrd.img"))
    );
}

#[test]
fn a_config_importing_conf_d_gets_a_drop_in_and_keeps_its_bytes() {
    let e = env();
    let main = e.root.join("etc/containerd/config.toml");
    let stock = include_str!("../tests/fixtures/containerd-2.3-default-v4.toml");
    std::fs::write(&main, stock).unwrap();
    let mut o = opts(&e);
    o.label_node = None;
    o.restart_containerd = false;
    let report = install(&o, &Recorder::default()).unwrap();
    assert_eq!(
        std::fs::read_to_string(&main).unwrap(),
        stock,
        "main config untouched"
    );
    let drop_in = e.root.join("etc/containerd/conf.d/husk.toml");
    let text = std::fs::read_to_string(&drop_in).unwrap();
    assert!(text.contains("version = 4\n"), "{text}");
    let found = containerd::find(&text).unwrap().unwrap();
    assert_eq!(
        found.runtime_type.as_deref(),
        Some(containerd::RUNTIME_TYPE)
    );
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("/etc/containerd/conf.d/husk.toml: created with")),
        "{report:?}"
    );
    let mut u = un(&e);
    u.restart_containerd = false;
    uninstall(&u, &Recorder::default()).unwrap();
    assert!(!drop_in.exists(), "the drop-in is removed");
    assert!(
        !e.root.join("etc/containerd/conf.d").exists(),
        "the directory install made is removed"
    );
    assert_eq!(std::fs::read_to_string(&main).unwrap(), stock);
}
