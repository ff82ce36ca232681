//! `husk install` → `husk check` → a container from the installed files → `husk uninstall`,
//! with the real built artifacts, on a host with hardware KVM (the test host here); and the
//! same on the stock config of the containerd release under test, with a CRI pod. Everything
//! goes below a temporary directory: prefix, containerd config (a copy of the host's), husk
//! config, the PATH directory for the shim link. End-to-end (`#[ignore]`d): run it with
//! `make e2e` or `make testhost`; `target/release/husk` comes from `make build`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use husk_tests::containerd::config::localize_stock;
use husk_tests::containerd::{run_bounded, Containerd, HuskArtifacts, HuskSettings, Release, HUSK};
use husk_tests::cri::Cri;
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

/// `<dir>/artifacts` with links to the five files `husk install --artifacts` takes.
fn artifacts_dir(dir: &Path, artifacts: &HuskArtifacts, husk: &Path) -> PathBuf {
    let src = dir.join("artifacts");
    std::fs::create_dir(&src).unwrap();
    for (name, f) in [
        ("containerd-shim-husk-v2", artifacts.shim.as_path()),
        ("husk-vmm", &artifacts.vmm),
        ("husk", husk),
        ("vmlinux", &artifacts.kernel),
        ("husk-initrd.img", &artifacts.initramfs),
    ] {
        std::os::unix::fs::symlink(f, src.join(name)).unwrap();
    }
    src
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
    let src = artifacts_dir(tmp, &artifacts, &husk);
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

/// `husk install` on the stock config of the containerd release under test (`containerd config
/// default`, moved into a private directory and nothing else changed): on containerd 2.3 the
/// config is version 4 and imports `conf.d/*.toml`, so the handler goes into `conf.d/husk.toml`
/// and the main config is not touched; on 1.x it is added to the main config. `husk check` finds
/// it, containerd started on that config runs the README's crictl walk-through (a pod with
/// `--runtime husk`, a container, exec, logs, stop and remove; `HUSK_CRICTL`), and
/// `husk uninstall` leaves the config byte for byte as it was.
#[test]
#[ignore = "end-to-end: needs hardware KVM and the built artifacts (make e2e)"]
fn install_on_a_stock_config_then_a_cri_pod() {
    e2e::require();
    let artifacts = HuskArtifacts::from_env().unwrap_or_else(|e| panic!("{e}"));
    let husk = husk_binary(&artifacts);
    let release = Release::current().expect("containerd");
    let base = tempfile::Builder::new()
        .prefix("hct-")
        .tempdir_in("/run")
        .unwrap()
        .keep();
    let p = |p: &Path| p.display().to_string();
    let out = Command::new(release.containerd())
        .args(["config", "default"])
        .output()
        .expect("containerd config default");
    let stock = localize_stock(&String::from_utf8_lossy(&out.stdout), &base);
    let ccfg = base.join("config.toml");
    std::fs::write(&ccfg, &stock).unwrap();
    let net_d = base.join("cni/net.d");
    std::fs::create_dir_all(&net_d).unwrap();
    std::fs::write(
        net_d.join("10-husk-cri.conflist"),
        husk_tests::cri::config::conflist(&base.join("cni/ipam")),
    )
    .unwrap();
    // The harness's husk config (test timeouts, pinned vCPUs nested): install keeps an
    // existing one, and the handler points at it.
    let (hstate, hcfg) = (base.join("hs"), base.join("husk.toml"));
    std::fs::write(&hcfg, HuskSettings::new(artifacts.clone()).toml(&hstate)).unwrap();
    let src = artifacts_dir(&base, &artifacts, &husk);
    let prefix = base.join("prefix");
    let (code, out) = run(Command::new(&husk).args([
        "install",
        "--prefix",
        &p(&prefix),
        "--containerd-config",
        &p(&ccfg),
        "--husk-config",
        &p(&hcfg),
        // The opt directory's bin/, which containerd puts first on its shims' PATH.
        "--link-dir",
        &p(&base.join("opt/bin")),
        "--artifacts",
        &p(&src),
    ]));
    assert_eq!(code, 0, "husk install failed:\n{out}");
    let drop_in = base.join("conf.d/husk.toml");
    if release.is_v2() {
        assert_eq!(
            std::fs::read_to_string(&ccfg).unwrap(),
            stock,
            "containerd {}: the main config is not touched",
            release.version
        );
        let d = std::fs::read_to_string(&drop_in).expect("the drop-in");
        assert!(d.contains("io.containerd.cri.v1.runtime"), "{d}");
    } else {
        assert!(std::fs::read_to_string(&ccfg)
            .unwrap()
            .contains("runtimes.husk]"));
    }
    let (_, out) = run(Command::new(&husk).args([
        "check",
        "--config",
        &p(&hcfg),
        "--containerd-config",
        &p(&ccfg),
    ]));
    assert!(
        check_line(&out, "containerd handler").starts_with("ok"),
        "{out}"
    );

    let c = Containerd::start_with_config_file(base.clone(), hstate, hcfg.clone())
        .expect("containerd on the installed stock config");
    husk_tests::cri::import_images(&c).expect("images");
    let crictl = std::env::var_os("HUSK_CRICTL")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);

    // `husk check` asks the running containerd (ctr, and crictl when on PATH) whether it
    // loaded the handler.
    let mut path: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    path.splice(
        0..0,
        crictl
            .iter()
            .filter_map(|c| c.parent().map(Path::to_path_buf))
            .chain(release.dir.clone()),
    );
    let (_, out) = run(Command::new(&husk)
        .env("PATH", std::env::join_paths(path).unwrap())
        .args([
            "check",
            "--config",
            &p(&hcfg),
            "--containerd-config",
            &p(&ccfg),
            "--containerd-address",
            &p(&c.socket()),
        ]));
    let live = check_line(&out, "containerd running");
    assert!(live.contains(&release.version), "{live}");
    if crictl.is_some() {
        assert!(
            live.starts_with("ok") && live.contains("husk handler loaded"),
            "{live}"
        );
    }

    let netns_before = husk_tests::cri::netns_names();
    let (pod, app) = match &crictl {
        Some(crictl) => pod_through_crictl(crictl, &c),
        None => {
            eprintln!(
                "*** HUSK_CRICTL is not set (make e2e sets it to \
                 ../shared/containerd/cri-tools/bin/crictl when that exists): the pod goes \
                 through husk-tests' CRI client instead of crictl ***"
            );
            pod_through_cri_client(&c)
        }
    };
    c.assert_clean(&[&pod, &app]);
    husk_tests::cri::wait_nothing_left(&c, &netns_before).unwrap();

    let (code, out) = run(Command::new(&husk).args(["uninstall", "--prefix", &p(&prefix)]));
    assert_eq!(code, 0, "husk uninstall failed:\n{out}");
    assert_eq!(
        std::fs::read_to_string(&ccfg).unwrap(),
        stock,
        "containerd's config is byte-identical after uninstall"
    );
    assert!(!drop_in.exists(), "the drop-in is left");
    assert!(!prefix.exists(), "{} is left", prefix.display());
}

/// The README's crictl walk-through (runtimeclass/README.md, "A pod through crictl") against
/// `c`, with the local busybox image: runp with `--runtime husk`, create, start, exec (the
/// guest's kernel), logs, stopp, rmp. Returns the pod's and the container's ids.
fn pod_through_crictl(crictl: &Path, c: &Containerd) -> (String, String) {
    let base = c.base();
    let logs = base.join("pods/web");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_json = base.join("pod.json");
    let pod_spec = serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "web-1"},
        "log_directory": logs, "linux": {}
    });
    std::fs::write(&pod_json, pod_spec.to_string()).unwrap();
    let app_json = base.join("app.json");
    let app_spec = serde_json::json!({
        "metadata": {"name": "app"}, "image": {"image": BUSYBOX_REF},
        "command": ["sh", "-c", "echo started; exec sleep 3600"], "log_path": "app.log",
        "linux": {}
    });
    std::fs::write(&app_json, app_spec.to_string()).unwrap();
    let endpoint = format!("unix://{}", c.socket().display());
    let crictl_out = |args: &[&str]| {
        let mut cmd = Command::new(crictl);
        cmd.args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "300s"])
        .args(args);
        run_bounded(cmd, None, Duration::from_secs(360))
    };
    let crictl_ok = |args: &[&str]| {
        let out = crictl_out(args);
        assert_eq!(out.code, 0, "crictl {args:?}: {out}\n{}", c.log_tail(60));
        out.stdout.trim().to_string()
    };
    let (pod_json, app_json) = (
        pod_json.display().to_string(),
        app_json.display().to_string(),
    );
    let pod = crictl_ok(&["runp", "--runtime", "husk", &pod_json]);
    let app = crictl_ok(&["create", &pod, &app_json, &pod_json]);
    crictl_ok(&["start", &app]);
    let kernel = crictl_ok(&["exec", &app, "uname", "-r"]);
    let node = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(kernel, node.trim(), "crictl exec ran in the node's kernel");
    let logged = (0..60).any(|_| {
        let out = crictl_out(&["logs", &app]);
        let found = out.code == 0 && out.stdout.contains("started");
        if !found {
            std::thread::sleep(Duration::from_secs(1));
        }
        found
    });
    assert!(logged, "crictl logs: {}", crictl_out(&["logs", &app]));
    crictl_ok(&["stopp", &pod]);
    crictl_ok(&["rmp", &pod]);
    (pod, app)
}

/// The same pod through husk-tests' CRI client, where no crictl is at hand.
fn pod_through_cri_client(c: &Containerd) -> (String, String) {
    let cri = Cri::connect(&c.socket()).expect("CRI");
    let logs = c.base().join("pods/web");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_cfg = husk_tests::cri::pod_config("web", &logs);
    let pod = cri
        .run_pod(&pod_cfg, "husk")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log_tail(60)));
    let app = cri
        .create_and_start(
            &pod,
            &pod_cfg,
            &husk_tests::cri::container_config("app", &["sleep", "3600"]),
        )
        .unwrap_or_else(|e| panic!("container: {e}\n{}", c.log_tail(60)));
    let x = cri.exec_sync(&app, &["uname", "-r"], 60).expect("exec");
    let node = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(x.exit_code, 0, "{x:?}");
    assert_ne!(
        String::from_utf8_lossy(&x.stdout).trim(),
        node.trim(),
        "ran in the node's kernel"
    );
    cri.stop_and_remove_pod(&pod).expect("stop/remove pod");
    (pod, app)
}
