//! `husk install` / `husk uninstall` through the binary, onto a temporary `--root` with fake
//! artifacts (no root privileges, no cluster): what lands where, idempotence, conflicts, and an
//! uninstall that leaves the tree exactly as it was.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEBIAN: &str = include_str!("fixtures/debian-default-v2.toml");
const V3: &str = include_str!("fixtures/containerd-2.x-v3.toml");
const V1: &str = include_str!("fixtures/v1-legacy.toml");
const ARTIFACTS: [&str; 5] = [
    "containerd-shim-husk-v2",
    "husk-vmm",
    "husk",
    "vmlinux",
    "husk-initrd.img",
];

struct Host {
    _t: tempfile::TempDir,
    root: PathBuf,
    artifacts: PathBuf,
}

impl Host {
    /// A host with /usr/local/bin and, if given, a containerd config.
    fn new(containerd: Option<&str>) -> Host {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let artifacts = t.path().join("artifacts");
        std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
        std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
        std::fs::create_dir_all(&artifacts).unwrap();
        for n in ARTIFACTS {
            std::fs::write(artifacts.join(n), format!("fake {n}\n")).unwrap();
        }
        if let Some(c) = containerd {
            std::fs::write(root.join("etc/containerd/config.toml"), c).unwrap();
        }
        Host {
            _t: t,
            root,
            artifacts,
        }
    }

    fn husk(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
        cmd.args(args).arg("--root").arg(&self.root);
        if args[0] == "install" {
            cmd.arg("--artifacts").arg(&self.artifacts);
        }
        cmd.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.husk(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "husk {args:?}: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.husk(args);
        assert!(!out.status.success(), "husk {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn at(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.at(p)).unwrap()
    }

    fn containerd(&self) -> String {
        self.read("/etc/containerd/config.toml")
    }

    /// Every path below the root with its kind, mode and contents (or link target).
    fn tree(&self) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let rel = p.strip_prefix(base).unwrap().to_path_buf();
                let what = if m.file_type().is_symlink() {
                    format!("link {}", std::fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    walk(&p, base, out);
                    "dir".into()
                } else {
                    format!(
                        "file {:o} {}",
                        m.permissions().mode() & 0o7777,
                        String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                    )
                };
                out.insert(rel, what);
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }
}

#[test]
fn install_places_everything_and_uninstall_restores_the_tree() {
    let h = Host::new(Some(DEBIAN));
    let before = h.tree();
    let out = h.ok(&["install"]);
    assert!(
        out.contains("installed /opt/husk/bin/containerd-shim-husk-v2"),
        "{out}"
    );
    assert!(
        out.contains("added [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]"),
        "{out}"
    );
    for (p, mode) in [
        ("/opt/husk/bin/containerd-shim-husk-v2", 0o755),
        ("/opt/husk/bin/husk-vmm", 0o755),
        ("/opt/husk/bin/husk", 0o755),
        ("/opt/husk/share/husk/vmlinux", 0o644),
        ("/opt/husk/share/husk/husk-initrd.img", 0o644),
    ] {
        let m = std::fs::metadata(h.at(p)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, mode, "{p}");
    }
    assert_eq!(
        std::fs::read_link(h.at("/usr/local/bin/containerd-shim-husk-v2")).unwrap(),
        PathBuf::from("/opt/husk/bin/containerd-shim-husk-v2"),
        "the link names the host path, not the root-relative one"
    );
    let cfg = h.read("/etc/husk/config.toml");
    assert!(
        cfg.contains("kernel = \"/opt/husk/share/husk/vmlinux\""),
        "{cfg}"
    );
    let c = h.containerd();
    assert!(
        c.starts_with(DEBIAN),
        "Debian's config is kept as it was:\n{c}"
    );
    assert!(c.contains("ConfigPath = \"/etc/husk/config.toml\""));
    assert!(c.contains("runtime_type = \"io.containerd.husk.v2\""));
    assert!(c.contains("pod_annotations = [\"io.husk.*\"]"));
    let record = h.read("/opt/husk/share/husk/install.json");
    assert!(record.contains("\"/opt/husk/bin/husk-vmm\""), "{record}");

    // A second install changes nothing and says so.
    let installed = h.tree();
    let out = h.ok(&["install"]);
    assert!(out.contains("already installed, nothing changed"), "{out}");
    assert!(out.contains("already registers"), "{out}");
    assert_eq!(h.tree(), installed);

    let out = h.ok(&["uninstall"]);
    assert!(
        out.contains("restored /etc/containerd/config.toml"),
        "{out}"
    );
    assert_eq!(h.containerd(), DEBIAN, "byte-identical");
    assert_eq!(h.tree(), before, "uninstall leaves the tree as it was");
    let err = h.fails(&["uninstall"]);
    assert!(
        err.contains("no install record at /opt/husk/share/husk/install.json"),
        "{err}"
    );
}

#[test]
fn version_3_configs_get_the_2x_table() {
    let h = Host::new(Some(V3));
    let before = h.tree();
    h.ok(&["install", "--prefix", "/usr/local"]);
    let c = h.containerd();
    assert!(c.starts_with(V3), "{c}");
    assert!(
        c.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.husk]"),
        "{c}"
    );
    assert!(c.contains("enable_selinux = false # keep this comment"));
    // The prefix's bin is the link directory: no link, the shim is there.
    assert!(h.at("/usr/local/bin/containerd-shim-husk-v2").is_file());
    h.ok(&["uninstall", "--prefix", "/usr/local"]);
    assert_eq!(h.tree(), before);
}

#[test]
fn a_missing_containerd_config_is_created_and_removed_again() {
    let h = Host::new(None);
    let before = h.tree();
    let out = h.ok(&[
        "install",
        "--containerd-config",
        "/etc/containerd/config.toml",
    ]);
    assert!(out.contains("created with"), "{out}");
    assert!(h.containerd().contains("version = 2"));
    h.ok(&["uninstall"]);
    assert_eq!(h.tree(), before);
}

#[test]
fn version_1_is_refused_and_nothing_is_touched() {
    let h = Host::new(Some(V1));
    let before = h.tree();
    let err = h.fails(&["install"]);
    assert!(err.contains("version 1 containerd config"), "{err}");
    assert!(err.contains("containerd config migrate"), "{err}");
    assert_eq!(h.tree(), before);
}

#[test]
fn a_different_handler_is_reported_not_clobbered_unless_forced() {
    let mine = format!(
        "{DEBIAN}\n# my own husk\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n  \
         runtime_type = \"/usr/bin/my-shim\"\n"
    );
    let h = Host::new(Some(&mine));
    let before = h.tree();
    let err = h.fails(&["install"]);
    assert!(err.contains("a different `husk` runtime handler"), "{err}");
    assert!(
        err.contains("/usr/bin/my-shim") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(h.tree(), before, "nothing changed");
    let out = h.ok(&["install", "--force"]);
    assert!(out.contains("replaced (--force)"), "{out}");
    assert!(!h.containerd().contains("my-shim"));
    h.ok(&["uninstall"]);
    assert_eq!(h.containerd(), mine, "the original handler is back");
    assert_eq!(h.tree(), before);
}

#[test]
fn an_existing_equal_handler_and_config_are_left_to_their_owner() {
    let h = Host::new(Some(DEBIAN));
    h.ok(&["install"]);
    let registered = h.containerd();
    h.ok(&["uninstall"]);
    // Someone registered husk by hand and wrote their own husk config.
    std::fs::write(h.at("/etc/containerd/config.toml"), &registered).unwrap();
    std::fs::create_dir_all(h.at("/etc/husk")).unwrap();
    std::fs::write(h.at("/etc/husk/config.toml"), "vcpus = 2\n").unwrap();
    let before = h.tree();
    let out = h.ok(&["install"]);
    assert!(out.contains("already registers"), "{out}");
    assert!(
        out.contains("/etc/husk/config.toml exists (kept as it is)"),
        "{out}"
    );
    h.ok(&["uninstall"]);
    assert_eq!(h.tree(), before);
}

#[test]
fn edits_after_install_survive_uninstall() {
    let h = Host::new(Some(DEBIAN));
    h.ok(&["install"]);
    let edited = format!(
        "{}\n[metrics]\n  address = \"127.0.0.1:1338\"\n",
        h.containerd()
    );
    std::fs::write(h.at("/etc/containerd/config.toml"), &edited).unwrap();
    std::fs::write(h.at("/etc/husk/config.toml"), "vcpus = 2\n").unwrap();
    let out = h.ok(&["uninstall"]);
    assert!(
        out.contains("changed since install: removed the husk handler"),
        "{out}"
    );
    assert!(out.contains("left /etc/husk/config.toml alone"), "{out}");
    let c = h.containerd();
    assert!(c.contains("address = \"127.0.0.1:1338\""), "{c}");
    assert!(!c.contains("runtimes.husk"), "{c}");
    assert!(c.starts_with(DEBIAN));
    assert!(!h.at("/opt/husk").exists());
}

#[test]
fn missing_artifacts_are_named() {
    let h = Host::new(Some(DEBIAN));
    std::fs::remove_file(h.artifacts.join("husk-initrd.img")).unwrap();
    let before = h.tree();
    let err = h.fails(&["install"]);
    assert!(err.contains("husk-initrd.img (looked in"), "{err}");
    assert_eq!(h.tree(), before);
}

#[test]
fn a_foreign_file_at_the_link_path_is_not_replaced() {
    let h = Host::new(Some(DEBIAN));
    std::fs::write(
        h.at("/usr/local/bin/containerd-shim-husk-v2"),
        "someone else's",
    )
    .unwrap();
    let before = h.tree();
    let err = h.fails(&["install"]);
    assert!(err.contains("is not husk's link"), "{err}");
    assert_eq!(h.tree(), before);
}
