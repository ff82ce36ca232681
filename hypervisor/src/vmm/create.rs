//! The two ways a `Machine` gets its VM: created empty with the kernel and initramfs read into
//! its RAM (a boot), or created over a snapshot's memory file (a restore). Both overlap their
//! slow steps on helper threads (the NICs' taps open on one of their own) and join them before
//! the jail.

use husk_protocol::vm_config::NetConfig;
use husk_protocol::VmConfig;

use super::{setup, VmmError};
use crate::arch::boot;
use crate::devices::virtio::net::Tap;
use crate::snapshot::{self, HostFingerprint, MemoryFile, SnapshotError, VmSnapshot};
use crate::timeline::Timeline;
use crate::vm::{Vm, VmError};

/// What [`make`] made.
pub(super) struct Made {
    pub vm: Vm,
    /// The kernel and initramfs read (a boot).
    pub images: Option<boot::LoadedImages>,
    /// The snapshot being restored.
    pub restoring: Option<VmSnapshot>,
    /// This host's fingerprint.
    pub host: HostFingerprint,
    /// The taps of `config.net`, in order.
    pub taps: Vec<Tap>,
}

/// Makes the VM of `config` (booted or restored) while a thread of its own opens the NICs'
/// taps (each joins its pod's network namespace on a short-lived thread); the scope joins it on
/// every path. What is wrong with the VM is said before what is wrong with a tap.
pub(super) fn make(
    config: &VmConfig,
    layout: &[(u64, u64)],
    timeline: &mut Timeline,
) -> Result<Made, VmmError> {
    std::thread::scope(|scope| {
        let taps = (!config.net.is_empty()).then(|| {
            std::thread::Builder::new()
                .name("husk-taps".into())
                .spawn_scoped(scope, || open_taps(&config.net))
        });
        let made = match config.restore.as_deref() {
            Some(dir) => map_snapshot(dir, config, layout, timeline)
                .map(|(vm, snapshot, host)| (vm, None, Some(snapshot), host)),
            None => create_and_load(config, layout, timeline).and_then(|(vm, images)| {
                let host = HostFingerprint::of(&vm.kvm).map_err(SnapshotError::from)?;
                Ok((vm, Some(images), None, host))
            }),
        };
        let taps = match taps {
            None => Ok(Vec::new()),
            Some(t) => t
                .map_err(setup("starting the tap opener"))?
                .join()
                .map_err(|_| VmmError::HelperPanicked("opening the taps"))?,
        };
        let (vm, images, restoring, host) = made?;
        Ok(Made {
            vm,
            images,
            restoring,
            host,
            taps: taps?,
        })
    })
}

/// Opens the tap of every NIC in `nets`, in order.
fn open_taps(nets: &[NetConfig]) -> Result<Vec<Tap>, VmmError> {
    nets.iter()
        .map(|n| Tap::open(&n.tap, n.netns.as_deref()).map_err(setup("virtio-net")))
        .collect()
}

/// Reads the snapshot in `dir`, checks it against `config` and this host, and creates the VM over
/// its memory file; returns this host's fingerprint too. A helper thread reads and parses the
/// state and takes the fingerprint while this one maps RAM (its place in the memory file follows
/// from the configuration) and creates the VM, and the threads' seccomp filters compile on
/// another (the cold path hides them behind the image loader); the scope joins both on every
/// path, so the main thread is alone again before the jail. What is wrong with the state is said
/// first, then a machine of another shape, then a memory file that is short, then another host.
fn map_snapshot(
    dir: &std::path::Path,
    config: &VmConfig,
    layout: &[(u64, u64)],
    timeline: &mut Timeline,
) -> Result<(Vm, VmSnapshot, HostFingerprint), VmmError> {
    std::thread::scope(|scope| {
        let filters = std::thread::Builder::new()
            .name("husk-filters".into())
            .spawn_scoped(scope, crate::seccomp::precompile)
            .map_err(setup("starting the filter compiler"))?;
        let state = std::thread::Builder::new()
            .name("husk-state".into())
            .spawn_scoped(scope, || (snapshot::read_state(dir), this_host()))
            .map_err(setup("starting the snapshot reader"))?;
        let built = (|| {
            let file = MemoryFile::open(dir, layout)?;
            let memory =
                crate::memory::from_file(&file.layout, &file.file).map_err(VmError::from)?;
            timeline.mark("memory");
            let vm = Vm::create(memory)?;
            timeline.mark("vm");
            Ok::<_, VmmError>(vm)
        })();
        let (state, host) = state
            .join()
            .map_err(|_| VmmError::HelperPanicked("reading the snapshot"))?;
        let compiled = filters
            .join()
            .map_err(|_| VmmError::HelperPanicked("compiling the seccomp filters"))?;
        let snapshot = state?;
        snapshot::fits(&snapshot, config, layout)?;
        let vm = built?;
        let host = host?;
        host.accepts(&snapshot.host).map_err(SnapshotError::from)?;
        compiled?;
        timeline.mark("snapshot");
        Ok((vm, snapshot, host))
    })
}

/// This host's fingerprint, read through a `/dev/kvm` descriptor of its own, so that the snapshot
/// reader takes it while the main thread creates the VM.
fn this_host() -> Result<HostFingerprint, VmmError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(VmError::OpenKvm)?;
    Ok(HostFingerprint::of(&kvm).map_err(SnapshotError::from)?)
}

/// Creates the VM and reads the kernel and initramfs into its RAM.
fn create_and_load(
    config: &VmConfig,
    layout: &[(u64, u64)],
    timeline: &mut Timeline,
) -> Result<(Vm, boot::LoadedImages), VmmError> {
    let memory = crate::memory::create(layout).map_err(VmError::from)?;
    // Reading the kernel and initramfs into guest RAM and creating the VM in KVM share no
    // state, so a loader thread does the first while this thread does the second. The
    // scope joins the loader on every path, an error included.
    std::thread::scope(|scope| {
        let loader = std::thread::Builder::new()
            .name("husk-loader".into())
            .spawn_scoped(scope, || {
                boot::load_images(&memory, &config.kernel, config.initramfs.as_deref())
            })
            .map_err(setup("starting the image loader"))?;
        let vm = Vm::create(memory.clone());
        // The loader takes longer than the VM: compile the threads' filters meanwhile.
        let filters = crate::seccomp::precompile();
        timeline.mark("vm");
        let images = loader
            .join()
            .map_err(|_| VmmError::HelperPanicked("loading the kernel and initramfs"))?;
        filters?;
        timeline.mark("images");
        Ok::<_, VmmError>((vm?, images?))
    })
}
