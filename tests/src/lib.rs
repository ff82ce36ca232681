//! husk's end-to-end harness.
//!
//! - [`hostkind`]: is this host's `/dev/kvm` hardware virtualization (VT-x/AMD-V) or not?
//! - [`testhost`]: run a command where hardware KVM exists: natively, or inside a QEMU TCG guest
//!   whose emulated AMD SVM gives it a real `/dev/kvm` (the "test host").
//! - [`microvm`]: boot a guest kernel under QEMU's `microvm` machine, the reference VMM.
//! - [`e2e`]: what end-to-end tests need from their environment (artifacts, KVM).
//! - [`agent`]: a client for husk-agent (hybrid handshake, ttrpc, stdio streams) and a host-mode
//!   agent fixture; [`rootfs`]: a busybox rootfs and OCI specs for containers.
//! - [`bench`]: statistics and the results file of `make bench`.
//! - [`containerd`]: a private containerd (own root, state, sockets) with husk's shim installed;
//!   [`oci_image`]: the busybox OCI image it imports; [`bench_ctr`]: `make bench BENCH=ctr`.
//! - [`cri`]: the same containerd with its CRI plugin on, and a CRI client (kubelet's calls);
//!   [`cgroup`]: the pod cgroups kubelet would make and what husk left in them; [`churn`]: pods
//!   created and removed in parallel, cycle after cycle (a test and a bench).
//! - [`guest_loss`]: the nested test host's guest losses, told apart from husk's by signature.

pub mod agent;
pub mod bench;
pub mod bench_agent;
pub mod bench_churn;
pub mod bench_cri;
pub mod bench_ctr;
pub mod bench_jail;
pub mod bench_net;
pub mod cgroup;
pub mod churn;
pub mod containerd;
pub mod cri;
pub mod e2e;
pub mod guest_loss;
pub mod hostkind;
pub mod microvm;
pub mod oci_image;
pub mod process;
pub mod rootfs;
pub mod stall;
pub mod testhost;
