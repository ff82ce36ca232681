//! A pod's security context in force inside the guest, exactly as runc has it on the host.
//!
//! One CRI containerd, one pod per handler (`runc`, `husk`), the same containers in each: the
//! runtime's default seccomp profile, a `Localhost` profile that denies `chmod` and
//! `sethostname`, `Unconfined`, capabilities added and dropped with no_new_privs, a read-only
//! root, masked and read-only paths, run-as user and group with supplementary groups, and the
//! defaults. Every container
//! prints one report from its init (read from its CRI log) and the same report from an exec
//! (ExecSync, which reaches the guest through a different path: libcontainer's tenant), and
//! each husk report must equal runc's line for line. The seccomp cases also assert what they
//! mean on their own (`Seccomp: 2`, the denials), so a runtime that drops a setting on both
//! sides still fails.
//! End-to-end tests (`#[ignore]`d): they run in the nested test host.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::containerd::Containerd;
use husk_tests::cri::{self, container_config, pod_config, running, wait_container, Cri};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::{
    Capability, Int64Value, LinuxContainerConfig, LinuxContainerSecurityContext, PodSandboxConfig,
    SecurityProfile,
};

const T: Duration = Duration::from_secs(300);
const END: &str = "report-end";

/// What every container prints about itself (stderr folded into stdout).
const REPORT: &str = r#"exec 2>&1
grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status
id
touch /rootfs-probe && echo rootfs-writable
touch /dev/shm/probe; chmod 600 /dev/shm/probe && echo chmod-allowed
hostname probe-name && echo sethostname-allowed
awk '$2=="/proc/sys"||$2=="/proc/sysrq-trigger"{split($4,o,",");print $2,o[1]}' /proc/mounts
echo timer_list bytes: $(head -c 1 /proc/timer_list | wc -c)
echo report-end"#;

/// A `Localhost` profile (OCI form, as containerd reads it): everything but these.
const DENY_CHMOD_AND_HOSTNAME: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
  "syscalls": [
    {"names": ["chmod", "fchmod", "fchmodat", "sethostname"], "action": "SCMP_ACT_ERRNO"}
  ]
}"#;

fn profile(kind: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// The cases: a name and the container's security context.
fn cases(localhost_profile: &Path) -> Vec<(&'static str, LinuxContainerSecurityContext)> {
    let runtime_default = || profile(ProfileType::RuntimeDefault, "");
    vec![
        ("defaults", LinuxContainerSecurityContext::default()),
        (
            "seccomp-runtime-default",
            LinuxContainerSecurityContext {
                seccomp: runtime_default(),
                ..Default::default()
            },
        ),
        (
            // CAP_SYS_ADMIN so that only the profile stands between the container and
            // sethostname.
            "seccomp-localhost",
            LinuxContainerSecurityContext {
                seccomp: profile(
                    ProfileType::Localhost,
                    &localhost_profile.display().to_string(),
                ),
                capabilities: Some(Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
        (
            "seccomp-unconfined",
            LinuxContainerSecurityContext {
                seccomp: profile(ProfileType::Unconfined, ""),
                ..Default::default()
            },
        ),
        (
            "capabilities-and-no-new-privs",
            LinuxContainerSecurityContext {
                seccomp: runtime_default(),
                capabilities: Some(Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["CHOWN".into(), "FOWNER".into()],
                    ..Default::default()
                }),
                no_new_privs: true,
                ..Default::default()
            },
        ),
        (
            "readonly-rootfs",
            LinuxContainerSecurityContext {
                seccomp: runtime_default(),
                readonly_rootfs: true,
                ..Default::default()
            },
        ),
        (
            // What kubelet sends (the CRI plugin masks nothing unless asked).
            "masked-and-readonly-paths",
            LinuxContainerSecurityContext {
                seccomp: runtime_default(),
                masked_paths: [
                    "/proc/asound",
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ]
                .map(String::from)
                .to_vec(),
                readonly_paths: [
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ]
                .map(String::from)
                .to_vec(),
                ..Default::default()
            },
        ),
        (
            "run-as-user-and-groups",
            LinuxContainerSecurityContext {
                seccomp: runtime_default(),
                run_as_user: Some(Int64Value { value: 1000 }),
                run_as_group: Some(Int64Value { value: 2000 }),
                supplemental_groups: vec![3000, 3001],
                ..Default::default()
            },
        ),
    ]
}

/// The report lines of a CRI log file, once [`END`] is there.
fn log_report(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    // CRI's format: "<time> <stream> <P|F> <line>".
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    lines
        .contains(&END)
        .then(|| lines.iter().map(|l| format!("{l}\n")).collect())
}

/// Runs every case in a pod of `handler`; returns `case -> (init report, exec report)`. A pod
/// whose guest the nested test host lost is run again, once, as kubelet would recreate it.
fn reports(
    c: &Containerd,
    cri: &Cri,
    handler: &str,
    profile: &Path,
) -> BTreeMap<String, (String, String)> {
    cri::retry_if_guest_lost(c, &format!("cri_security[{handler}]"), |attempt| {
        let logs = c.base().join(format!("pods/sec-{handler}-{attempt}"));
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let mut pod_cfg = pod_config(&format!("sec-{handler}"), &logs);
        if let Some(m) = pod_cfg.metadata.as_mut() {
            m.attempt = attempt;
        }
        let pod = cri
            .run_pod(&pod_cfg, handler)
            .map_err(|e| format!("RunPodSandbox ({handler}): {e}"))?;
        let out = run_cases(cri, handler, profile, &pod, &pod_cfg, &logs);
        let removed = cri
            .stop_and_remove_pod(&pod)
            .map_err(|e| format!("[{handler}] removing the pod: {e}"));
        let out = out?;
        removed.map(|()| out)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(60)))
}

/// Every case, one container each, in the running `pod`.
fn run_cases(
    cri: &Cri,
    handler: &str,
    profile: &Path,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    logs: &Path,
) -> Result<BTreeMap<String, (String, String)>, String> {
    let script = format!("{REPORT}\nexec sleep 3600");
    let mut out = BTreeMap::new();
    for (name, security) in cases(profile) {
        let mut cfg = container_config(name, &["sh", "-c", &script]);
        cfg.linux = Some(LinuxContainerConfig {
            security_context: Some(security),
            ..Default::default()
        });
        let id = cri
            .create_and_start(pod, pod_cfg, &cfg)
            .map_err(|e| format!("[{handler}] container {name}: {e}"))?;
        wait_container(cri, &id, T, running)
            .map_err(|e| format!("[{handler}] container {name}: {e:#}"))?;
        let log = logs.join(format!("{name}.log"));
        let deadline = Instant::now() + Duration::from_secs(120);
        let init = loop {
            if let Some(r) = log_report(&log) {
                break r;
            }
            // A container that is no longer running (its VM died) never writes it.
            let gone = cri.container_status(&id).is_ok_and(|s| !running(&s));
            if gone || Instant::now() >= deadline {
                if let Some(r) = log_report(&log) {
                    break r;
                }
                return Err(format!(
                    "[{handler}] {name}: no report in {} (container still running: {}): {:?}",
                    log.display(),
                    !gone,
                    std::fs::read_to_string(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        let exec = cri
            .exec_sync(&id, &["sh", "-c", REPORT], 120)
            .map_err(|e| format!("[{handler}] exec in {name}: {e}"))?;
        let exec = String::from_utf8_lossy(&exec.stdout).into_owned();
        eprintln!("cri_security[{handler}] {name}:\n  init: {init:?}\n  exec: {exec:?}");
        out.insert(name.to_string(), (init, exec));
    }
    Ok(out)
}

fn seccomp_mode(report: &str) -> &str {
    report
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
        .unwrap_or("missing")
}

#[test]
#[ignore = "end-to-end: needs hardware KVM and husk's artifacts (make e2e)"]
fn cri_security_context_is_in_force_in_the_guest_as_under_runc() {
    let (c, cri) = cri::start(Some(&cri::husk_settings()));
    let netns_before = cri::netns_names();
    let profile = c.base().join("deny-chmod-and-hostname.json");
    std::fs::write(&profile, DENY_CHMOD_AND_HOSTNAME).unwrap();

    let runc = reports(&c, &cri, "runc", &profile);
    let husk = reports(&c, &cri, "husk", &profile);

    for (name, (init, exec)) in &husk {
        for (path, report) in [("init", init), ("exec", exec)] {
            let want = match name.as_str() {
                "seccomp-unconfined" => "0",
                "defaults" => seccomp_mode(&runc[name].0),
                _ => "2",
            };
            assert_eq!(
                seccomp_mode(report),
                want,
                "husk {name} ({path}): seccomp mode\n{report}"
            );
            if name == "masked-and-readonly-paths" {
                assert!(
                    report.contains("timer_list bytes: 0\n")
                        && report.contains("/proc/sys ro\n")
                        && report.contains("/proc/sysrq-trigger ro\n"),
                    "husk {name} ({path}): masked or read-only paths not in force\n{report}"
                );
            }
            if name == "seccomp-localhost" {
                assert!(
                    !report.contains("chmod-allowed") && !report.contains("sethostname-allowed"),
                    "husk {name} ({path}): the Localhost profile's denials are not in force\n{report}"
                );
            }
        }
        let (runc_init, runc_exec) = &runc[name];
        assert_eq!(
            init, runc_init,
            "{name}: the container's own report differs from runc's"
        );
        assert_eq!(
            exec, runc_exec,
            "{name}: an exec's report differs from runc's"
        );
    }
    assert_eq!(husk.len(), runc.len());
    cri::wait_nothing_left(&c, &netns_before).unwrap();
}
