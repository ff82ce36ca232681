//! The test host's kernel and initramfs: Debian's stock kernel package (which has `kvm_amd` and
//! the 9p modules), busybox and a generated init, cached outside the work tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_image::{Compression, Entry, ImageTree};

/// The init script of the test host.
const INIT_SCRIPT: &str = include_str!("init.sh");

/// Modules the test host loads, in addition to their dependencies. Names as `modprobe` takes them.
pub const MODULES: &[&str] = &[
    // crc32c for libcrc32c (nf_conntrack, ext4): a soft dependency modules.dep does not list.
    "crc32c_generic",
    // Transport for QEMU's q35 virtio devices.
    "virtio_pci",
    // The host root and the writable shares.
    "9pnet_virtio",
    "9p",
    "overlay",
    // A pod's size-limited writable layers (husk's `writable_limit_mib`): ext4 on a loop device.
    "loop",
    "ext4",
    // The point of the whole exercise: hardware virtualization on emulated AMD SVM.
    "kvm_amd",
    // Pod networking in the end-to-end tests: taps, veths, the CNI bridge, NAT and tc redirect.
    "tun",
    "veth",
    "bridge",
    "br_netfilter",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "xt_MASQUERADE",
    // The shim's port-forward redirect in a pod's network namespace (iptables -j REDIRECT).
    "xt_REDIRECT",
    "nft_redir",
    "xt_tcpudp",
    // What cri_pod's mesh-style container programs in a runc pod's network namespace (the
    // guest kernel has them built in): iptables-nft's nat table and REDIRECT above, a bridge.
    "nft_nat",
    "xt_comment",
    "xt_addrtype",
    "xt_mark",
    "xt_conntrack",
    "sch_ingress",
    "act_mirred",
    "cls_matchall",
    "cls_u32",
    // The host side of QEMU's vhost-vsock device, the anchor of husk-vmm's vsock benchmark.
    "vhost_vsock",
    // Block images for the VMM's virtio-blk tests.
    "loop",
    "ext4",
];

/// A prepared test host.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Debian's `vmlinuz`.
    pub kernel: PathBuf,
    /// The generated initramfs.
    pub initramfs: PathBuf,
    /// The kernel release (`uname -r` inside the test host).
    pub release: String,
}

/// Why the test host could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Debian's kernel package could not be found or fetched.
    #[error("{0}")]
    Package(String),
    /// A helper command failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    /// A module the test host needs is not in the kernel package.
    #[error("module {0} is not in the test host kernel package")]
    Module(String),
    /// busybox is missing or not static.
    #[error("{0}")]
    Busybox(String),
    /// Writing the image failed.
    #[error(transparent)]
    Image(#[from] husk_image::ImageError),
    /// I/O on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Root of husk's caches (outside the work tree).
pub fn cache_root() -> PathBuf {
    std::env::var_os("HUSK_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/husk".into())
}

/// Returns the cached test host, building it first if its inputs changed.
pub fn prepare_assets() -> Result<Assets, AssetError> {
    let dir = cache_root().join("testhost");
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let busybox = find_busybox()?;
    let package = match kernel_package() {
        Ok(p) => p,
        Err(e) => return newest_cached(&dir).ok_or(e),
    };
    let key = input_key(&package, &busybox);
    let out = dir.join(format!("{package}-{key}"));
    if let Some(assets) = load(&out) {
        return Ok(assets);
    }
    let lock_path = dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(io_at(&lock_path))?;
    // SAFETY: flock(2) on a descriptor we own for the duration of the call; the lock is released
    // when `lock` is dropped at the end of this function.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if let Some(assets) = load(&out) {
        return Ok(assets);
    }
    eprintln!("husk-testhost: preparing the test host from {package} (once per kernel version)");
    let work = tempfile::tempdir_in(&dir).map_err(io_at(&dir))?;
    build(work.path(), &package, &busybox)?;
    let staged = work.path().join("out");
    let _ = fs::remove_dir_all(&out);
    fs::rename(&staged, &out).map_err(io_at(&out))?;
    load(&out).ok_or_else(|| {
        AssetError::Package(format!("{} is incomplete after building", out.display()))
    })
}

fn load(dir: &Path) -> Option<Assets> {
    let release = fs::read_to_string(dir.join("release")).ok()?;
    let (kernel, initramfs) = (dir.join("vmlinuz"), dir.join("initramfs.cpio.gz"));
    (kernel.is_file() && initramfs.is_file()).then(|| Assets {
        kernel,
        initramfs,
        release: release.trim().into(),
    })
}

fn newest_cached(dir: &Path) -> Option<Assets> {
    let mut found: Vec<_> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    found.sort();
    found.into_iter().rev().find_map(|(_, p)| load(&p))
}

/// The versioned kernel package behind Debian's `linux-image-amd64` (or HUSK_TESTHOST_KERNEL_PKG).
fn kernel_package() -> Result<String, AssetError> {
    if let Ok(p) = std::env::var("HUSK_TESTHOST_KERNEL_PKG") {
        return Ok(p);
    }
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .map_err(|e| AssetError::Package(format!("cannot run apt-cache: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| {
            AssetError::Package(
                "cannot find Debian's kernel package: `apt-cache depends linux-image-amd64` named none; \
                 run `apt-get update` (or set HUSK_TESTHOST_KERNEL_PKG)"
                    .into(),
            )
        })
}

fn find_busybox() -> Result<PathBuf, AssetError> {
    let path =
        PathBuf::from(std::env::var_os("HUSK_BUSYBOX").unwrap_or_else(|| "/bin/busybox".into()));
    let bytes = fs::read(&path).map_err(|_| {
        AssetError::Busybox(format!(
            "{} not found: install Debian's busybox-static",
            path.display()
        ))
    })?;
    if husk_image::elf::has_interpreter(&bytes) {
        return Err(AssetError::Busybox(format!(
            "{} is dynamically linked: install Debian's busybox-static",
            path.display()
        )));
    }
    Ok(path)
}

fn input_key(package: &str, busybox: &Path) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    // Content of everything that shapes the image; a change rebuilds it.
    let mut h = DefaultHasher::new();
    (package, INIT_SCRIPT, MODULES, env!("CARGO_PKG_VERSION")).hash(&mut h);
    fs::metadata(busybox)
        .map(|m| m.len())
        .unwrap_or(0)
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

fn run(cmd: &mut Command) -> Result<(), AssetError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| AssetError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .join(" | ");
    Err(AssetError::Command {
        command: shown,
        detail,
    })
}

fn build(work: &Path, package: &str, busybox: &Path) -> Result<(), AssetError> {
    run(Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work))?;
    let deb = fs::read_dir(work)
        .map_err(io_at(work))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            AssetError::Package(format!("apt-get download {package} produced no .deb"))
        })?;
    let root = work.join("pkg");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let modules_dir = root.join("lib/modules");
    let release = fs::read_dir(&modules_dir)
        .map_err(io_at(&modules_dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| AssetError::Package(format!("{package} has no lib/modules")))?;
    run(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    let kdir = modules_dir.join(&release);
    let dep_file = kdir.join("modules.dep");
    let deps = parse_modules_dep(&fs::read_to_string(&dep_file).map_err(io_at(&dep_file))?);
    let order = load_order(&deps, MODULES)?;

    let init = work.join("init");
    fs::write(&init, INIT_SCRIPT).map_err(io_at(&init))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755)).map_err(io_at(&init))?;
    let mut tree = ImageTree::for_init(&init)?;
    tree.add_host_path(busybox, "/bin/busybox")?;
    for rel in &order {
        tree.add_host_path(&kdir.join(rel), &format!("/lib/modules/{release}/{rel}"))?;
    }
    let mut list = order.join("\n");
    list.push('\n');
    tree.insert(
        "/etc/modules.load",
        Entry::Bytes {
            data: list.into_bytes(),
            perm: 0o644,
        },
    )?;

    let out = work.join("out");
    fs::create_dir_all(&out).map_err(io_at(&out))?;
    tree.write(&out.join("initramfs.cpio.gz"), Compression::Gzip)?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    fs::copy(&vmlinuz, out.join("vmlinuz")).map_err(io_at(&vmlinuz))?;
    let mut f = fs::File::create(out.join("release")).map_err(io_at(&out))?;
    writeln!(f, "{release}").map_err(io_at(&out))?;
    Ok(())
}

/// modules.dep as "relative path → dependency paths".
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| {
            (
                m.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// The module name of a path: file stem with '-' read as '_' (as modprobe does).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The paths to insmod, dependencies first, each once.
pub fn load_order(
    deps: &BTreeMap<String, Vec<String>>,
    wanted: &[&str],
) -> Result<Vec<String>, AssetError> {
    let by_name: BTreeMap<String, &String> = deps.keys().map(|p| (module_name(p), p)).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        for dep in deps.get(path).into_iter().flatten() {
            visit(dep, deps, seen, order);
        }
        order.push(path.to_string());
    }
    for name in wanted {
        let path = by_name
            .get(&name.replace('-', "_"))
            .ok_or_else(|| AssetError::Module(name.to_string()))?;
        visit(path, deps, &mut seen, &mut order);
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko:
kernel/fs/overlayfs/overlay.ko:
";

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = parse_modules_dep(DEP);
        let order = load_order(&deps, &["kvm_amd", "overlay", "kvm"]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/crypto/ccp/ccp.ko",
                "kernel/virt/lib/irqbypass.ko",
                "kernel/arch/x86/kvm/kvm.ko",
                "kernel/arch/x86/kvm/kvm-amd.ko",
                "kernel/fs/overlayfs/overlay.ko",
            ]
        );
    }

    #[test]
    fn unknown_module_is_named() {
        let err = load_order(&parse_modules_dep(DEP), &["nope"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
