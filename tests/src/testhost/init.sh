#!/bin/busybox sh
# /init of the husk test host: a QEMU TCG guest with Debian's stock kernel, whose kvm_amd module
# turns the emulated AMD SVM into a real /dev/kvm. It loads the modules, builds a root from the
# host's root filesystem (9p, read-only) under a tmpfs overlay, mounts the writable shares, runs
# the command and powers off. Parameters come from the kernel command line:
#   husk.rundir=DIR   the run directory (shared writable): cmd.sh in, stdout/stderr/exit out
#   husk.rw=A,B       further host directories shared writable at the same paths (tags rw1, rw2, ...)
#   husk.kvm_amd=P,Q  kvm_amd module parameters (e.g. npt=0)
/bin/busybox mkdir -p /bin /sbin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

die() {
  echo "husk-testhost-init: error: $*"
  [ -n "$rundir" ] && [ -d "/newroot$rundir" ] && echo "$*" > "/newroot$rundir/init-error"
  sync
  poweroff -f
}

rundir=
rw=
kvm_amd=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    husk.rundir=*) rundir=${arg#*=} ;;
    husk.rw=*) rw=${arg#*=} ;;
    husk.kvm_amd=*) kvm_amd=$(echo "${arg#*=}" | tr ',' ' ') ;;
  esac
done

kver=$(uname -r)
while read -r m; do
  params=
  case "$m" in */kvm-amd.ko) params=$kvm_amd ;; esac
  # shellcheck disable=SC2086 # the parameters are separate words
  insmod "/lib/modules/$kver/$m" $params || die "insmod $m $params failed"
done < /etc/modules.load
[ -n "$rundir" ] || die "no husk.rundir= on the kernel command line"

p9="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p /mnt/lower /mnt/rw /newroot
mount -t 9p -o "$p9,ro,cache=loose" hostroot /mnt/lower || die "mounting the host root over 9p failed"
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
  || die "overlay root failed"

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || die "cgroup2 mount failed"
# KVM's exit tracepoint, kept only for SHUTDOWN exits (SVM exit code 0x7f: a guest's triple
# fault). Its rip is where the guest was when it faulted, read before KVM resets the vCPU (what
# KVM_GET_REGS shows afterwards is the reset state); the lines go to $rundir/kvm-shutdowns, which
# husk-testhost prints with the guest kernel's symbol for each rip.
tr=/newroot/sys/kernel/tracing
# Also every KVM_RUN that returns KVM_EXIT_SHUTDOWN (8) to userspace: one without a SHUTDOWN
# exit just before it is a triple fault KVM itself synthesized.
if mount -t tracefs tracefs "$tr" 2>/dev/null && [ -d "$tr/events/kvm/kvm_exit" ]; then
  echo 'exit_reason == 127' > "$tr/events/kvm/kvm_exit/filter" &&
    echo 1 > "$tr/events/kvm/kvm_exit/enable" || echo "husk-testhost-init: kvm_exit tracing not enabled"
  echo 'reason == 8' > "$tr/events/kvm/kvm_userspace_exit/filter" &&
    echo 1 > "$tr/events/kvm/kvm_userspace_exit/enable" ||
    echo "husk-testhost-init: kvm_userspace_exit tracing not enabled"
fi
# The same loss without the triple fault: KVM's emulator re-injects a page fault on an instruction
# fetch that the guest cannot take, thousands of times a second, and the vCPU never runs again.
# A trace instance of its own keeps those injections (vector 14, I/D bit set) in a small ring,
# and the monitor below records a loop when ten seconds hold 100 of them (an ordinary guest
# gets none: its own page faults never leave the guest).
fl=$tr/instances/fetchloop
if [ -d "$tr/events/kvm/kvm_inj_exception" ] && mkdir "$fl" 2>/dev/null; then
  echo 64 > "$fl/buffer_size_kb"
  echo 'exception == 14 && error_code & 16' > "$fl/events/kvm/kvm_inj_exception/filter" &&
    echo 1 > "$fl/events/kvm/kvm_inj_exception/enable" ||
    echo "husk-testhost-init: fetch-fault loop tracing not enabled"
fi
# Plain tmpfs (not overlay) where runtimes put their own overlay mounts and state. The host's
# /tmp stays visible (through the overlay): work trees and run directories may live there.
for d in /run /var/lib/containerd /var/lib/husk; do
  mkdir -p "/newroot$d"
  mount -t tmpfs -o mode=0755 tmpfs "/newroot$d"
done

i=0
for dir in "$rundir" $(echo "$rw" | tr ',' ' '); do
  mkdir -p "/newroot$dir"
  mount -t 9p -o "$p9,cache=mmap" "rw$i" "/newroot$dir" || die "mounting writable share $dir failed"
  i=$((i + 1))
done

hostname husk-testhost
ip link set lo up
echo ready > "/newroot$rundir/ready"
# Make the overlay the root of the mount namespace and of PID 1, the way switch_root does: a
# plain chroot of a child would leave the initramfs as the namespace's and init's root, and a
# process that joins a mount namespace with setns(2) (an exec into a container) or compares its
# root with /proc/1/root would see the difference. The initramfs stays in memory (tiny); the
# rest of this script runs in the new root with the host's busybox (busybox-static).
cd /newroot || die "cd /newroot failed"
mount --move . / || die "moving the overlay root onto / failed"
[ -x ./bin/busybox ] || die "the host has no /bin/busybox (install busybox-static)"
# A heartbeat every 5 s while the command runs: husk-testhost stops a test host whose heartbeat
# stalls (its userspace stopped: seen when nested guests hold both of its CPUs) instead of
# waiting for the command's whole timeout.
#
# One idle VM (an in-kernel irqchip and one vCPU that never runs) is held for the test host's
# whole life, so that no VM a test or bench starts is ever the first or the last one: KVM does
# global work for the first VM (enabling SVM on every CPU by IPI, and switching on the static
# keys of the scheduler's preempt notifiers and of a software-disabled LAPIC), undoes it after
# the last, and redoes it for the next. Switching a static key rewrites kernel code that every
# CPU is executing (finish_task_switch); under TCG that is the dearest thing a guest can do, and
# a test host whose CPUs both sat in that rewrite, or whose KVM waited on the IPI of the last
# VM's teardown, stopped for good ("wedged"). Real hosts pay microseconds for it; their pods
# mostly start beside other VMs anyway.
hold_kvm='$0 = "husk-testhost-kvm-holder";
  open(my $kvm, "+<", "/dev/kvm") or die "/dev/kvm: $!\n";
  my $fd = ioctl($kvm, 0xAE01, 0) or die "KVM_CREATE_VM: $!\n";
  open(my $vm, "+<&=", $fd + 0) or die "the VM descriptor: $!\n";
  ioctl($vm, 0xAE60, 0) or die "KVM_CREATE_IRQCHIP: $!\n";
  ioctl($vm, 0xAE41, 0) or die "KVM_CREATE_VCPU: $!\n";
  sleep;'
exec chroot . /bin/busybox sh -c '
  cd /
  /usr/bin/perl -e "$2" 2>&1 | sed "s/^/husk-testhost-init: holding a VM: /" &
  ( while :; do date +%s > "$1/heartbeat"; sleep 5; done ) &
  [ -r /sys/kernel/tracing/trace_pipe ] &&
    ( while read -r l; do echo "$l" >> "$1/kvm-shutdowns"; done < /sys/kernel/tracing/trace_pipe ) &
  fl=/sys/kernel/tracing/instances/fetchloop/trace
  [ -r "$fl" ] &&
    ( while sleep 10; do
        n=$(grep -c kvm_inj_exception "$fl")
        [ "$n" -gt 0 ] || continue
        [ "$n" -lt 100 ] ||
          echo "fetch-fault loop: $n injections in 10 s, the last: $(grep kvm_inj_exception "$fl" | tail -n 1)" >> "$1/kvm-shutdowns"
        echo > "$fl"
      done ) &
  /bin/sh "$1/cmd.sh" > "$1/stdout" 2> "$1/stderr" < /dev/null
  echo $? > "$1/exit"
  sync
  /bin/busybox poweroff -f || echo o > /proc/sysrq-trigger' husk-testhost-init "$rundir" "$hold_kvm"
