//! Every verdict of `husk check`, from fake host facts.

use std::collections::HashMap;
use std::io::{Error, ErrorKind};

use super::*;

const AMD_FLAGS: &str = "processor\t: 0\nflags\t\t: fpu vme svm lm\n";
const PVM_FLAGS: &str = "processor\t: 0\nflags\t\t: fpu vme hypervisor lm\n";

#[derive(Debug, Clone)]
struct Fake {
    cpuinfo: &'static str,
    modules: Vec<&'static str>,
    kvm: Result<KvmFacts, ErrorKind>,
    /// Readable files and their text.
    files: HashMap<PathBuf, String>,
    tun: Result<(), ErrorKind>,
    shim: Option<PathBuf>,
    config: Result<Option<HuskConfig>, String>,
    /// Tools on PATH (ctr, crictl) and what running them prints.
    tools: HashMap<&'static str, Result<ToolRun, String>>,
}

fn good_kvm() -> KvmFacts {
    KvmFacts {
        api_version: 12,
        extensions: vec![
            ("KVM_CAP_IRQCHIP", true),
            ("KVM_CAP_IRQFD", true),
            ("KVM_CAP_IOEVENTFD", true),
        ],
    }
}

const SECCOMP_ACTIONS: &str = "/proc/sys/kernel/seccomp/actions_avail";

const REGISTERED: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n\
    runtime_type = \"io.containerd.husk.v2\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk.options]\n\
    ConfigPath = \"/etc/husk/config.toml\"\n";

impl Fake {
    /// A host where everything is in place: AMD-V, installed under /opt/husk.
    fn good() -> Fake {
        let mut files = HashMap::new();
        for f in [
            "bin/husk-vmm",
            "share/husk/vmlinux",
            "share/husk/husk-initrd.img",
        ] {
            files.insert(Path::new("/opt/husk").join(f), String::new());
        }
        files.insert(PathBuf::from(CONTAINERD_CONFIG), REGISTERED.to_string());
        for ns in ["mnt", "net", "ipc", "uts", "pid"] {
            files.insert(Path::new("/proc/self/ns").join(ns), String::new());
        }
        files.insert(
            PathBuf::from(SECCOMP_ACTIONS),
            "kill_process kill_thread trap errno user_notif trace log allow\n".into(),
        );
        files.insert(PathBuf::from(MOUNTINFO), UNIFIED.into());
        Fake {
            cpuinfo: AMD_FLAGS,
            modules: vec!["kvm", "kvm_amd"],
            kvm: Ok(good_kvm()),
            files,
            tun: Ok(()),
            shim: Some(PathBuf::from("/opt/husk/bin/containerd-shim-husk-v2")),
            config: Ok(None),
            tools: HashMap::from([
                ("ctr", Ok(tool(0, CTR_VERSION, ""))),
                (
                    "crictl",
                    Ok(tool(0, r#"{"runtimeHandlers":[{"name":"husk"}]}"#, "")),
                ),
            ]),
        }
    }
}

impl Probe for Fake {
    fn cpuinfo(&self) -> std::io::Result<String> {
        Ok(self.cpuinfo.to_string())
    }
    fn module_loaded(&self, name: &str) -> bool {
        self.modules.contains(&name)
    }
    fn kvm(&self) -> std::io::Result<KvmFacts> {
        self.kvm.clone().map_err(Error::from)
    }
    fn open_read(&self, path: &Path) -> std::io::Result<()> {
        self.files
            .get(path)
            .map(drop)
            .ok_or_else(|| Error::from(ErrorKind::NotFound))
    }
    fn open_rw(&self, _: &Path) -> std::io::Result<()> {
        self.tun.map_err(Error::from)
    }
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| Error::from(ErrorKind::NotFound))
    }
    fn find_on_path(&self, name: &str) -> Option<PathBuf> {
        if self.tools.contains_key(name) {
            return Some(Path::new("/usr/bin").join(name));
        }
        self.shim.clone().filter(|_| name == SHIM)
    }
    fn run(&self, program: &Path, _: &[&str]) -> Result<ToolRun, String> {
        let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
        self.tools
            .get(name)
            .cloned()
            .unwrap_or_else(|| Err(format!("{name}: not found")))
    }
    fn husk_config(&self, _: Option<&Path>) -> Result<Loaded, ConfigError> {
        match &self.config {
            Ok(None) => Ok(Loaded {
                config: HuskConfig::default(),
                source: None,
            }),
            Ok(Some(c)) => Ok(Loaded {
                config: c.clone(),
                source: Some("/etc/husk/config.toml".into()),
            }),
            Err(m) => Err(ConfigError::Parse {
                path: "/etc/husk/config.toml".into(),
                message: m.clone(),
            }),
        }
    }
    fn fallback_bindir(&self) -> PathBuf {
        PathBuf::from("/nowhere/bin")
    }
}

fn lines(p: &Fake) -> Vec<Line> {
    run(p, &CheckOptions::default())
}

fn line<'a>(ls: &'a [Line], check: &str) -> &'a Line {
    ls.iter().find(|l| l.check == check).unwrap()
}

#[test]
fn a_good_host_passes_every_check() {
    let ls = lines(&Fake::good());
    for l in &ls {
        assert_eq!(l.status, Status::Ok, "{l}");
    }
    assert!(!failed(&ls));
    assert_eq!(ls.len(), 13);
    assert!(line(&ls, "hardware virtualization")
        .detail
        .contains("kvm_amd"));
    assert_eq!(
        line(&ls, "guest kernel").detail,
        "/opt/husk/share/husk/vmlinux"
    );
    let printed = ls[0].to_string();
    assert!(
        printed.starts_with("ok   hardware virtualization: AMD-V"),
        "{printed}"
    );
}

#[test]
fn pvm_fails_and_points_at_the_test_host() {
    let mut f = Fake::good();
    f.cpuinfo = PVM_FLAGS;
    f.modules = vec!["kvm", "kvm_pvm"];
    let ls = lines(&f);
    assert!(failed(&ls));
    let l = line(&ls, "hardware virtualization");
    assert_eq!(l.status, Status::Fail);
    assert!(
        l.detail.contains("PVM") && l.detail.contains("cannot boot"),
        "{l}"
    );
    let fix = l.fix.as_deref().unwrap();
    assert!(
        fix.contains("VT-x or AMD-V") && fix.contains("make testhost"),
        "{fix}"
    );
    // PVM wins even where a hardware module is also loaded.
    f.modules = vec!["kvm", "kvm_intel", "kvm_pvm"];
    assert_eq!(
        line(&lines(&f), "hardware virtualization").status,
        Status::Fail
    );
}

#[test]
fn a_cpu_flag_without_its_module_says_modprobe() {
    let mut f = Fake::good();
    f.modules = vec!["kvm"];
    let l = line(&lines(&f), "hardware virtualization").clone();
    assert_eq!(l.status, Status::Fail);
    assert!(l.fix.unwrap().starts_with("modprobe kvm_amd"));
    f.cpuinfo = "flags\t: fpu\n";
    let l = line(&lines(&f), "hardware virtualization").clone();
    assert!(l.detail.contains("no vmx or svm"), "{l}");
}

#[test]
fn dev_kvm_missing_or_denied_and_the_api_is_then_not_checked() {
    let mut f = Fake::good();
    f.kvm = Err(ErrorKind::NotFound);
    let ls = lines(&f);
    assert_eq!(line(&ls, "/dev/kvm").detail, "does not exist");
    assert_eq!(line(&ls, "KVM API").status, Status::Warn);
    f.kvm = Err(ErrorKind::PermissionDenied);
    let ls = lines(&f);
    let l = line(&ls, "/dev/kvm");
    assert_eq!(l.status, Status::Fail);
    assert!(l.fix.as_deref().unwrap().contains("kvm group"));
}

#[test]
fn a_wrong_api_version_or_missing_extension_fails() {
    let mut f = Fake::good();
    let mut k = good_kvm();
    k.extensions[1].1 = false;
    f.kvm = Ok(k);
    let l = line(&lines(&f), "KVM API").clone();
    assert_eq!(l.status, Status::Fail);
    assert!(l.detail.contains("missing KVM_CAP_IRQFD"), "{l}");
    let mut k = good_kvm();
    k.api_version = 11;
    f.kvm = Ok(k);
    assert!(line(&lines(&f), "KVM API").detail.contains("is 11"));
}

#[test]
fn artifacts_follow_the_config_and_missing_ones_say_where_to_set_them() {
    let mut f = Fake::good();
    f.config = Ok(Some(HuskConfig {
        kernel: Some("/srv/vmlinux".into()),
        ..HuskConfig::default()
    }));
    let ls = lines(&f);
    assert_eq!(line(&ls, "husk config").detail, "/etc/husk/config.toml");
    let k = line(&ls, "guest kernel");
    assert_eq!(k.status, Status::Fail);
    assert!(k.detail.starts_with("/srv/vmlinux"));
    assert!(k
        .fix
        .as_deref()
        .unwrap()
        .contains("set `kernel = \"...\"` in /etc/husk/config.toml"));
    assert_eq!(line(&ls, "husk-vmm").status, Status::Ok);
}

#[test]
fn without_the_shim_on_path_defaults_are_relative_to_this_binary() {
    let mut f = Fake::good();
    f.shim = None;
    let ls = lines(&f);
    assert_eq!(line(&ls, "shim on PATH").status, Status::Fail);
    assert!(line(&ls, "husk-vmm")
        .detail
        .starts_with("/nowhere/bin/husk-vmm"));
}

#[test]
fn a_bad_husk_config_fails_with_its_message() {
    let mut f = Fake::good();
    f.config = Err("unknown field `vcpu`".into());
    let l = line(&lines(&f), "husk config").clone();
    assert_eq!(l.status, Status::Fail);
    assert!(l.detail.contains("unknown field `vcpu`"));
}

#[test]
fn tun_missing_fails() {
    let mut f = Fake::good();
    f.tun = Err(ErrorKind::NotFound);
    let l = line(&lines(&f), "/dev/net/tun").clone();
    assert_eq!(l.status, Status::Fail);
    assert!(l.fix.unwrap().contains("modprobe tun"));
}

#[test]
fn containerd_config_verdicts() {
    let cases: &[(Option<&str>, Status, &str)] = &[
        (None, Status::Fail, "defaults have no husk handler"),
        (Some("version = 2\n"), Status::Fail, "has no husk runtime handler"),
        (Some("[plugins.cri]\n"), Status::Fail, "version 1 format"),
        (Some("version = [\n"), Status::Fail, "not valid TOML"),
        (
            Some("version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.husk]\nruntime_type = 'io.containerd.husk.v2'\n"),
            Status::Ok,
            "(config version 3)",
        ),
        (
            Some("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\nruntime_type = 'io.containerd.runc.v2'\n"),
            Status::Fail,
            "not \"io.containerd.husk.v2\"",
        ),
        (Some(REGISTERED), Status::Ok, "ConfigPath /etc/husk/config.toml"),
    ];
    for (text, status, needle) in cases {
        let mut f = Fake::good();
        match text {
            Some(t) => f.files.insert(CONTAINERD_CONFIG.into(), t.to_string()),
            None => f.files.remove(Path::new(CONTAINERD_CONFIG)),
        };
        let l = line(&lines(&f), "containerd handler").clone();
        assert_eq!(l.status, *status, "{text:?}: {l}");
        assert!(l.to_string().contains(needle), "{text:?}: {l}");
        if l.status == Status::Fail {
            assert!(l.fix.is_some());
        }
    }
    let mut f = Fake::good();
    f.files
        .insert(CONTAINERD_CONFIG.into(), "[plugins.cri]\n".into());
    let l = line(&lines(&f), "containerd handler").clone();
    assert!(l.fix.unwrap().contains("containerd config migrate"));
}

#[test]
fn the_handler_in_husks_drop_in_counts_where_the_main_config_imports_it() {
    let mut f = Fake::good();
    f.files.insert(
        CONTAINERD_CONFIG.into(),
        "version = 4\nimports = ['/etc/containerd/conf.d/*.toml']\n".into(),
    );
    let l = line(&lines(&f), "containerd handler").clone();
    assert_eq!(l.status, Status::Fail, "no drop-in yet: {l}");
    f.files.insert(
        "/etc/containerd/conf.d/husk.toml".into(),
        "version = 4\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.husk]\n\
         runtime_type = 'io.containerd.husk.v2'\n"
            .into(),
    );
    let l = line(&lines(&f), "containerd handler").clone();
    assert_eq!(l.status, Status::Ok, "{l}");
    assert!(
        l.to_string()
            .contains("/etc/containerd/conf.d/husk.toml registers"),
        "{l}"
    );
}

#[test]
fn a_kernel_that_cannot_jail_husk_vmm_fails_naming_the_option() {
    let jail = |f: &Fake| {
        lines(f)
            .into_iter()
            .find(|l| l.check == "husk-vmm jail")
            .unwrap()
    };
    let good = jail(&Fake::good());
    assert_eq!(good.status, Status::Ok, "{good}");
    let mut f = Fake::good();
    f.files.remove(Path::new("/proc/self/ns/net"));
    f.files.remove(Path::new(SECCOMP_ACTIONS));
    let l = jail(&f);
    assert_eq!(l.status, Status::Fail);
    let text = l.to_string();
    assert!(text.contains("net namespaces (CONFIG_NET_NS)"), "{text}");
    assert!(
        text.contains("seccomp filters (CONFIG_SECCOMP_FILTER)"),
        "{text}"
    );
    let mut f = Fake::good();
    f.files
        .insert(PathBuf::from(SECCOMP_ACTIONS), "kill_process allow".into());
    assert!(jail(&f).to_string().contains("the seccomp action log"));
}

const MOUNTINFO: &str = "/proc/self/mountinfo";
const UNIFIED: &str = "29 1 0:25 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";

#[test]
fn the_cgroup_hierarchy_is_named_v2_hybrid_or_missing() {
    let cg = |f: &Fake| lines(f).into_iter().find(|l| l.check == "cgroups").unwrap();
    let good = cg(&Fake::good());
    assert_eq!(good.status, Status::Ok, "{good}");
    assert!(good.to_string().contains("cgroup v2 (unified"), "{good}");
    let mut f = Fake::good();
    f.files.insert(
        MOUNTINFO.into(),
        "31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
         34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
            .into(),
    );
    let l = cg(&f);
    assert_eq!(l.status, Status::Ok, "{l}");
    assert!(l.to_string().contains("cgroup v1 (hybrid"), "{l}");
    f.files.insert(
        MOUNTINFO.into(),
        "31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n".into(),
    );
    assert_eq!(cg(&f).status, Status::Warn, "{}", cg(&f));
    f.files.remove(Path::new(MOUNTINFO));
    assert_eq!(cg(&f).status, Status::Fail);
}

fn tool(code: i32, stdout: &str, stderr: &str) -> ToolRun {
    ToolRun {
        code,
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

const CTR_VERSION: &str = "Client:\n  Version:  v2.3.4\n\nServer:\n  Version:  v2.3.4\n  UUID: u\n";

#[test]
fn the_running_containerd_is_asked_which_handlers_it_loaded() {
    let live = |f: &Fake| line(&lines(f), "containerd running").clone();
    let mut f = Fake::good();
    f.tools.clear();
    let l = live(&f);
    assert_eq!(l.status, Status::Warn, "no ctr: {l}");
    f.tools
        .insert("ctr", Ok(tool(1, "", "ctr: connection refused\n")));
    let l = live(&f);
    assert!(
        l.status == Status::Warn && l.to_string().contains("connection refused"),
        "{l}"
    );
    f.tools.insert("ctr", Ok(tool(0, CTR_VERSION, "")));
    let l = live(&f);
    assert!(
        l.status == Status::Warn && l.to_string().contains("crictl is not on PATH"),
        "{l}"
    );
    f.tools.insert(
        "crictl",
        Ok(tool(
            0,
            r#"{"runtimeHandlers":[{"name":"runc"}]}"#,
            "WARN[0000] image connect using default endpoints\n",
        )),
    );
    let l = live(&f);
    assert_eq!(l.status, Status::Fail, "{l}");
    assert!(
        l.to_string().contains("v2.3.4") && l.to_string().contains("runc"),
        "{l}"
    );
    assert!(
        l.fix
            .as_deref()
            .unwrap_or("")
            .contains("restart containerd"),
        "{l}"
    );
    f.tools.insert(
        "crictl",
        Ok(tool(
            0,
            r#"{"runtimeHandlers":[{"name":"runc"},{"name":"husk"}]}"#,
            "",
        )),
    );
    let l = live(&f);
    assert_eq!(l.status, Status::Ok, "{l}");
    assert!(l.to_string().contains("containerd v2.3.4"), "{l}");
}
