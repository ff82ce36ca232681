//! `husk install` → `husk check` → a container from the installed files → `husk uninstall`,
//! with the real built artifacts, on a host with hardware KVM (the test host here). Everything
//! goes below a temporary directory: prefix, containerd config (a copy of the host's), husk
//! config, the PATH directory for the shim link. End-to-end (`#[ignore]`d): run it with
//! `make e2e` or `make testhost`; `target/release/husk` comes from `make build`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_tests::containerd::{Containerd, HuskArtifacts, HuskSettings, HUSK};
use husk_tests::e2e;
use husk_tests::oci_image::BUSYBOX_REF;

/// Debian's shipped containerd config, if the host has none.
const DEBIAN_DEFAULT: &str =
    "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    \
    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n      \
    conf_dir = \"/etc/cni/net.d\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    \
    path = \"/var/lib/containerd/opt\"\n";

fn husk_binary(artifacts: &HuskArtifacts) -> PathBuf {
    let husk = artifacts.vmm.parent().unwrap().join("husk");
    assert!(
        husk.is_file(),
        "{} is missing: run `make build` (or cargo build --release -p husk-cli)",
        husk.display()
    );
    husk
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("running husk");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ {cmd:?}\n{text}");
    (out.status.code().unwrap_or(-1), text)
}

fn check_line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(4..)
                .unwrap_or("")
                .trim_start()
                .starts_with(&format!("{check}:"))
        })
        .unwrap_or_else(|| panic!("no `{check}` line in:\n{out}"))
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and the built artifacts (make e2e)"]
fn install_check_run_uninstall() {
    e2e::require();
    let artifacts = HuskArtifacts::from_env().unwrap_or_else(|e| panic!("{e}"));
    let husk = husk_binary(&artifacts);
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path();
    let src = tmp.join("artifacts");
    std::fs::create_dir(&src).unwrap();
    for (name, p) in [
        ("containerd-shim-husk-v2", &artifacts.shim),
        ("husk-vmm", &artifacts.vmm),
        ("husk", &husk),
        ("vmlinux", &artifacts.kernel),
        ("husk-initrd.img", &artifacts.initramfs),
    ] {
        std::os::unix::fs::symlink(p, src.join(name)).unwrap();
    }
    let original = std::fs::read_to_string("/etc/containerd/config.toml")
        .unwrap_or_else(|_| DEBIAN_DEFAULT.to_string());
    let ccfg = tmp.join("config.toml");
    std::fs::write(&ccfg, &original).unwrap();
    let prefix = tmp.join("opt/husk");
    let hcfg = tmp.join("etc/husk/config.toml");
    let bin = tmp.join("bin");
    let p = |p: &Path| p.display().to_string();

    let (code, out) = run(Command::new(&husk).args([
        "install",
        "--prefix",
        &p(&prefix),
        "--containerd-config",
        &p(&ccfg),
        "--husk-config",
        &p(&hcfg),
        "--link-dir",
        &p(&bin),
        "--artifacts",
        &p(&src),
    ]));
    assert_eq!(code, 0, "husk install failed:\n{out}");
    assert!(std::fs::read_to_string(&ccfg)
        .unwrap()
        .contains("runtimes.husk]"));

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (code, out) = run(Command::new(&husk).env("PATH", &path).args([
        "check",
        "--config",
        &p(&hcfg),
        "--containerd-config",
        &p(&ccfg),
    ]));
    let virt = check_line(&out, "hardware virtualization");
    assert!(
        virt.starts_with("ok") && (virt.contains("kvm_amd") || virt.contains("kvm_intel")),
        "{virt}"
    );
    for c in [
        "/dev/kvm",
        "KVM API",
        "husk-vmm",
        "guest kernel",
        "guest initramfs",
    ] {
        assert!(
            check_line(&out, c).starts_with("ok"),
            "{}",
            check_line(&out, c)
        );
    }
    assert!(check_line(&out, "guest kernel").contains(&p(&prefix)));
    assert!(check_line(&out, "containerd handler").starts_with("ok"));
    assert!(check_line(&out, "shim on PATH").contains(&p(&prefix)));
    assert_eq!(code, 0, "husk check found a failure:\n{out}");

    // The installed files run a container (a private containerd, the installed shim).
    let installed = HuskArtifacts {
        shim: prefix.join("bin/containerd-shim-husk-v2"),
        vmm: prefix.join("bin/husk-vmm"),
        kernel: prefix.join("share/husk/vmlinux"),
        initramfs: prefix.join("share/husk/husk-initrd.img"),
    };
    {
        let c = Containerd::start(Some(&HuskSettings::new(installed))).expect("containerd");
        c.import_busybox().expect("busybox image");
        let r = c.ctr(
            &[
                "run",
                "--rm",
                "--runtime",
                HUSK,
                BUSYBOX_REF,
                "inst1",
                "echo",
                "installed-ok",
            ],
            None,
            Duration::from_secs(300),
        );
        assert_eq!(
            (r.code, r.stdout.trim()),
            (0, "installed-ok"),
            "{r}\ncontainerd log:\n{}",
            c.log_tail(40)
        );
        c.assert_clean(&["inst1"]);
    }

    let (code, out) = run(Command::new(&husk).args(["uninstall", "--prefix", &p(&prefix)]));
    assert_eq!(code, 0, "husk uninstall failed:\n{out}");
    assert_eq!(
        std::fs::read_to_string(&ccfg).unwrap(),
        original,
        "containerd's config is byte-identical after uninstall"
    );
    assert!(!prefix.exists(), "{} is left", prefix.display());
    assert!(!hcfg.exists());
    assert!(!bin.join("containerd-shim-husk-v2").exists());
}
