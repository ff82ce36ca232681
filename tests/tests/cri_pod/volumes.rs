//! hostPath volumes in a pod: read-write, replaced on the host, read-only, and mount propagation
//! (HostToContainer and Bidirectional, with a mount the host makes after the container started).

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_tests::cri::{container_config, eventually, running, wait_container};
use k8s_cri::v1::{Mount, MountPropagation};

use crate::scenario::{sh, Pod};
use crate::T;

/// The host's side of the pod's plain hostPath volumes.
pub struct Volumes {
    data: PathBuf,
    cfg: PathBuf,
    ro: PathBuf,
}

impl Volumes {
    /// Makes the directories below `base` and their first files.
    pub fn new(base: &Path) -> Volumes {
        let v = Volumes {
            data: base.join("vol/data"),
            cfg: base.join("vol/cfg"),
            ro: base.join("vol/ro"),
        };
        for d in [&v.data, &v.cfg, &v.ro] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(v.data.join("hello.txt"), "from-host\n").unwrap();
        std::fs::write(v.cfg.join("key"), "v1\n").unwrap();
        std::fs::write(v.ro.join("fixed"), "fixed\n").unwrap();
        v
    }

    /// The mounts of a container that has them all: /data, /cfg (read-only) and /ro.
    pub fn mounts(&self) -> Vec<Mount> {
        vec![
            bind(&self.data, "/data", false),
            bind(&self.cfg, "/cfg", true),
            bind(&self.ro, "/ro", true),
        ]
    }

    /// What container `id` (with [`Volumes::mounts`]) sees and writes through them.
    pub fn check(&self, pod: &Pod, id: &str) {
        assert_eq!(sh(pod.cri, id, "cat /data/hello.txt"), "from-host\n");
        sh(pod.cri, id, "echo from-pod > /data/pod.txt");
        assert_eq!(
            std::fs::read_to_string(self.data.join("pod.txt")).unwrap(),
            "from-pod\n"
        );
        assert_eq!(sh(pod.cri, id, "cat /cfg/key"), "v1\n");
        std::fs::write(self.cfg.join(".key.tmp"), "v2\n").unwrap();
        std::fs::rename(self.cfg.join(".key.tmp"), self.cfg.join("key")).unwrap();
        assert!(
            eventually(Duration::from_secs(60), || sh(pod.cri, id, "cat /cfg/key")
                == "v2\n"),
            "a file replaced on the host never became visible in the pod"
        );
        let w = pod
            .cri
            .exec_sync(id, &["sh", "-c", "echo x > /ro/w"], 60)
            .unwrap();
        assert_ne!(w.exit_code, 0, "a read-only mount accepted a write");
        assert!(
            String::from_utf8_lossy(&w.stderr).contains("Read-only"),
            "{:?}",
            String::from_utf8_lossy(&w.stderr)
        );
        assert_eq!(sh(pod.cri, id, "cat /ro/fixed"), "fixed\n");
    }
}

fn bind(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container.into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts everything at and below its path when dropped (what [`propagation`] mounted), so a
/// failed test leaves no mount behind either.
pub struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(&self.0)
            .status();
    }
}

/// A container with the `prop` volume twice, HostToContainer at /slave and Bidirectional at
/// /shared; after it started, the host mounts a tmpfs below the volume and the container must
/// see it through both. Returns the container's id and the guard of the host's mounts.
/// containerd requires such a volume's source to be a shared mount.
pub fn propagation(pod: &Pod, prop: &Path) -> (String, Unmount) {
    std::fs::create_dir_all(prop).unwrap();
    let p = prop.display().to_string();
    run("mount", &["-t", "tmpfs", "-o", "size=1m", "husk-prop", &p]);
    let mounted = Unmount(prop.to_path_buf());
    run("mount", &["--make-shared", &p]);
    let mut cfg = container_config("prop", &["sleep", "3600"]);
    cfg.mounts = vec![
        Mount {
            propagation: MountPropagation::PropagationHostToContainer as i32,
            ..bind(prop, "/slave", false)
        },
        Mount {
            propagation: MountPropagation::PropagationBidirectional as i32,
            ..bind(prop, "/shared", false)
        },
    ];
    let id = pod.start(&cfg, "with rslave and rshared volumes");
    wait_container(pod.cri, &id, T, running).unwrap();
    let sub = prop.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "husk-prop-sub",
            &sub.display().to_string(),
        ],
    );
    std::fs::write(sub.join("late.txt"), "mounted-after-start\n").unwrap();
    for dest in ["/slave", "/shared"] {
        let mut last = String::new();
        assert!(
            eventually(Duration::from_secs(60), || {
                last = pod
                    .cri
                    .exec_sync(&id, &["cat", &format!("{dest}/sub/late.txt")], 60)
                    .map(|r| String::from_utf8_lossy(&r.stdout).into_owned())
                    .unwrap_or_else(|e| e.to_string());
                last == "mounted-after-start\n"
            }),
            "a mount the host made below the {dest} volume after start never appeared: {last:?}"
        );
    }
    (id, mounted)
}
