//! Snapshot and restore: a paused VM written to a directory, and a VM that continues from one.
//!
//! A snapshot directory holds two files:
//! - `state`: everything but RAM ([`VmSnapshot`]) in a versioned, checksummed envelope
//!   ([`format`]): each vCPU ([`vcpu`]), the in-kernel PICs, IOAPIC, PIT and kvmclock
//!   ([`vm`]), the serial port, and every virtio-mmio transport with its queues
//!   ([`crate::devices::virtio::mmio::TransportState`]), plus the host it was taken on
//!   ([`compat`]) and where RAM lies in the memory file;
//! - `memory`: guest RAM as a sparse file ([`memory`]), mapped `MAP_PRIVATE` on restore.
//!
//! Taking one ([`take`]): the VM is paused; each vCPU thread completes its last exit and
//! reads its own state (`vcpu::Vcpus::save_states`, before `take`); every device's worker stops, so nothing writes guest RAM; the files
//! are written into descriptors opened when the VM was built (husk-vmm's jail has no path to
//! write to) and synced; then the devices resume, so the VM can run on. A device whose backend
//! holds state the snapshot cannot carry (a mounted virtio-fs share) refuses the snapshot.
//!
//! Restoring ([`read_state`], [`MemoryFile::open`], then `vmm`): the state is checked before
//! the VM runs: header, checksum, the husk that wrote it, the host's CPUID and KVM
//! capabilities ([`compat`]), and the configuration's vCPUs, memory ([`fits`]) and device
//! list. RAM is mapped and the VM created while the state is read (the memory file's layout
//! follows from the configuration alone). The devices are built from the new
//! configuration (this VM's sockets, taps and shares) and resume on the saved queues; the
//! vsock device tells the guest that its connections are gone (a transport reset).
//!
//! The i8042 model keeps no state between guest accesses worth saving (the husk kernel only
//! writes its reset command), so it is not in the snapshot.

pub mod compat;
pub mod format;
pub mod memory;
pub mod vcpu;
pub mod vm;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use compat::{CompatError, HostFingerprint};
pub use vcpu::{VcpuState, VcpuStateError};
pub use vm::{KvmVmState, VmStateError};

use crate::devices::legacy::SerialSnapshot;
use crate::devices::virtio::mmio::TransportState;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Everything of a VM but its RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The host it was taken on.
    pub host: HostFingerprint,
    /// The configuration's memory size (MiB).
    pub memory_mib: u32,
    /// Each vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// Interrupt controllers, PIT, kvmclock.
    pub vm: KvmVmState,
    /// The serial port.
    pub serial: SerialSnapshot,
    /// Every virtio-mmio transport, in slot order.
    pub devices: Vec<TransportState>,
    /// Where RAM lies in the memory file.
    pub memory: Vec<memory::RegionEntry>,
}

/// Why a snapshot could not be taken or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file was refused.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: format::FormatError,
    },
    /// A file of the snapshot could not be opened, read or written.
    #[error("{what}: {source}")]
    Io {
        /// Which file and what was done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host differs from the snapshot's.
    #[error(transparent)]
    Host(#[from] CompatError),
    /// The configuration describes another machine than the snapshot.
    #[error("the snapshot does not fit the configuration: {0}")]
    Mismatch(String),
    /// The VM cannot be snapshotted in its current state.
    #[error("{0}")]
    NotNow(String),
    /// A vCPU's state.
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    /// The VM's interrupt controllers, PIT or clock.
    #[error(transparent)]
    Vm(#[from] VmStateError),
    /// A virtio transport.
    #[error(transparent)]
    Device(#[from] crate::devices::virtio::mmio::PersistError),
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SnapshotError {
    move |source| SnapshotError::Io { what, source }
}

/// The files a VM configured with a `snapshot_dir` writes its snapshot into, opened (and
/// emptied) when it is built.
#[derive(Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
    state: File,
    memory: File,
}

impl SnapshotFiles {
    /// Creates (or empties) `dir/state` and `dir/memory`; `dir` must exist.
    pub fn create(dir: &Path) -> Result<Self, SnapshotError> {
        let open = |name: &str| {
            let path = dir.join(name);
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(io(format!("creating {}", path.display())))
        };
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            state: open(STATE_FILE)?,
            memory: open(MEMORY_FILE)?,
        })
    }
}

/// Reads `dir/state`, checking its header, checksum and writer.
pub fn read_state(dir: &Path) -> Result<VmSnapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let mut file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
    format::read(&mut std::io::BufReader::new(&mut file))
        .map_err(|source| SnapshotError::Format { path, source })
}

/// A snapshot's memory file, open, and where each RAM region lies in it.
#[derive(Debug)]
pub struct MemoryFile {
    /// The file.
    pub file: File,
    /// `(guest address, length, file offset)` per region.
    pub layout: Vec<(u64, u64, u64)>,
}

/// Where [`memory::write`] puts RAM laid out as `ram` (`(guest address, length)` per region):
/// the regions back to back from offset 0.
pub fn file_layout(ram: &[(u64, u64)]) -> Vec<(u64, u64, u64)> {
    let mut offset = 0u64;
    ram.iter()
        .map(|&(addr, len)| {
            let at = offset;
            offset = offset.saturating_add(len);
            (addr, len, at)
        })
        .collect()
}

impl MemoryFile {
    /// Opens `dir/memory` for RAM laid out as `ram`, which it must hold whole. The layout
    /// follows from `ram` alone, so the file can be mapped while the state is still being
    /// read; [`fits`] then checks that the state's regions are these.
    pub fn open(dir: &Path, ram: &[(u64, u64)]) -> Result<Self, SnapshotError> {
        let path = dir.join(MEMORY_FILE);
        let file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(io(format!("reading {}", path.display())))?
            .len();
        let layout = file_layout(ram);
        let needed = layout
            .iter()
            .map(|&(_, len, offset)| offset.saturating_add(len))
            .max()
            .unwrap_or(0);
        if len < needed {
            return Err(SnapshotError::Format {
                path,
                source: format::FormatError::Truncated {
                    expected: needed,
                    found: len,
                },
            });
        }
        Ok(MemoryFile { file, layout })
    }
}

/// Checks that `snapshot` is of the machine `config` describes, whose RAM layout is `ram`
/// (`(guest address, length)` per region), with RAM where [`file_layout`] puts it.
pub fn fits(
    snapshot: &VmSnapshot,
    config: &husk_protocol::VmConfig,
    ram: &[(u64, u64)],
) -> Result<(), SnapshotError> {
    let s = snapshot;
    if s.vcpus.len() != usize::from(config.vcpus) {
        return Err(SnapshotError::Mismatch(format!(
            "{} vCPUs in the snapshot, vcpus = {} in the configuration",
            s.vcpus.len(),
            config.vcpus
        )));
    }
    let saved: Vec<(u64, u64, u64)> = s
        .memory
        .iter()
        .map(|r| (r.guest_addr, r.len, r.file_offset))
        .collect();
    if s.memory_mib != config.memory_mib || saved != file_layout(ram) {
        return Err(SnapshotError::Mismatch(format!(
            "{} MiB of RAM in the snapshot, memory_mib = {} in the configuration",
            s.memory_mib, config.memory_mib
        )));
    }
    Ok(())
}

/// What [`take`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Bytes of RAM data written (the rest of RAM is holes).
    pub memory_bytes: u64,
    /// Size of the state file.
    pub state_bytes: u64,
}

/// The running machine's parts a snapshot reads.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The VM.
    pub vm: &'a crate::vm::Vm,
    /// Every vCPU's state, read by its parked thread (`Vcpus::save_states`).
    pub vcpus: Vec<VcpuState>,
    /// The virtio devices.
    pub virtio: &'a crate::device_manager::VirtioMmioDevices,
    /// The serial port's state.
    pub serial: SerialSnapshot,
    /// This host.
    pub host: &'a HostFingerprint,
    /// The configured RAM size.
    pub memory_mib: u32,
}

/// Writes the paused VM of `parts` into `files`, then lets its devices run again.
pub fn take(mut parts: Parts<'_>, files: &SnapshotFiles) -> Result<Taken, SnapshotError> {
    let blockers = parts.virtio.snapshot_blockers();
    if !blockers.is_empty() {
        return Err(SnapshotError::NotNow(blockers.join("; ")));
    }
    let vm = KvmVmState::save(&parts.vm.fd)?;
    let devices = parts.virtio.quiesce()?;
    // From here on the devices are stopped: whatever happens, they run again.
    let written = write_files(&mut parts, files, vm, &devices);
    let resumed = parts.virtio.restore(&devices);
    let taken = written?;
    resumed?;
    Ok(taken)
}

fn write_files(
    parts: &mut Parts<'_>,
    files: &SnapshotFiles,
    vm: KvmVmState,
    devices: &[TransportState],
) -> Result<Taken, SnapshotError> {
    let dir = files.dir.display();
    let mem_what = || format!("writing {dir}/{MEMORY_FILE}");
    files.memory.set_len(0).map_err(io(mem_what()))?;
    let written = memory::write(&parts.vm.memory, &files.memory).map_err(io(mem_what()))?;
    files.memory.sync_all().map_err(io(mem_what()))?;
    let snapshot = VmSnapshot {
        host: parts.host.clone(),
        memory_mib: parts.memory_mib,
        vcpus: std::mem::take(&mut parts.vcpus),
        vm,
        serial: parts.serial.clone(),
        devices: devices.to_vec(),
        memory: written.regions,
    };
    let state_what = || format!("writing {dir}/{STATE_FILE}");
    let mut body = Vec::new();
    format::write(&mut body, &snapshot).map_err(|e| SnapshotError::Io {
        what: state_what(),
        source: std::io::Error::other(e.to_string()),
    })?;
    files.state.set_len(0).map_err(io(state_what()))?;
    {
        use std::os::unix::fs::FileExt;
        files
            .state
            .write_all_at(&body, 0)
            .map_err(io(state_what()))?;
    }
    files.state.sync_all().map_err(io(state_what()))?;
    Ok(Taken {
        memory_bytes: written.data_bytes,
        state_bytes: body.len() as u64,
    })
}
