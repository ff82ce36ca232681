#!/usr/bin/env bash
# Traces restored VMs' starts from the test host's side, for scripts/probe/trace-restore.py:
# a private containerd on husk installed under PREFIX (scripts/install.sh) runs one cold
# `ctr run` (which makes the template), then ROUNDS restored ones; each restored run is recorded
# with the test host's KVM exits, entries and nested page faults and its scheduler's switches
# and wake-ups, on the monotonic clock, in a trace instance of its own (the test host's init
# reads the main buffer). The shim's log lines that mark husk-vmm's start, its `vCPUs running`
# and the agent's answer are kept beside them, with the clock offset that lines them up.
#
# Usage (outside): scripts/probe/trace-restore.sh IMAGE_TAR ROUNDS PREFIX OUT
#   runs itself inside a fresh test host (target/release/husk-testhost, built by `make testhost`),
#   with OUT's parent directory writable there; then: scripts/probe/trace-restore.py OUT
# HUSK_TRACE_TEMPLATE_TMPFS=OPTIONS puts the template directory on a tmpfs of its own mounted
#   with those options (e.g. huge=within_size: the memory file's page cache in 2 MiB pages).
set -uo pipefail

if [ "${HUSK_TRACE_INSIDE:-}" != 1 ]; then
  [ $# -eq 4 ] || { echo "usage: $0 IMAGE_TAR ROUNDS PREFIX OUT" >&2; exit 2; }
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  image=$(realpath "$1") out=$(realpath -m "$4")
  mkdir -p "$out"
  exec "$repo/target/release/husk-testhost" --timeout 1500 --rw "$out" -- \
    "HUSK_TRACE_INSIDE=1 bash $repo/scripts/probe/trace-restore.sh $image $2 $(realpath "$3") $out"
fi

image=$1 rounds=$2 prefix=$3 out=$4
rm -f "$out"/trace-*.txt "$out"/log.txt "$out"/offset
base=$(mktemp -d /run/husk-trace.XXXXXX)
if [ -n "${HUSK_TRACE_TEMPLATE_TMPFS:-}" ]; then
  mkdir -p "$base/templates"
  mount -t tmpfs -o "mode=0700,$HUSK_TRACE_TEMPLATE_TMPFS" husk-templates "$base/templates"
fi
cat >"$base/config.toml" <<EOC
version = 2
root = "$base/root"
state = "$base/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$base/containerd.sock"
[ttrpc]
  address = "$base/containerd.sock.ttrpc"
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "$base/opt"
EOC
cat >"$base/husk.toml" <<EOC
boot_timeout_secs = 120
state_dir = "$base/hs"
template_dir = "$base/templates"
EOC
PATH="$prefix/bin:$PATH" HUSK_CONFIG="$base/husk.toml" \
  containerd --config "$base/config.toml" >"$base/containerd.log" 2>&1 &
c() { ctr --address "$base/containerd.sock" "$@"; }
for _ in $(seq 1 300); do c version >/dev/null 2>&1 && break; sleep 0.2; done
c image import "$image" >/dev/null
c run --rm --runtime io.containerd.husk.v2 localhost/busybox:demo cold true
for _ in $(seq 1 300); do ls "$base"/templates/*/template.json >/dev/null 2>&1 && break; sleep 1; done
sleep 3
T=/sys/kernel/tracing/instances/husk-trace
mkdir -p $T
python3 -c 'import time; print(time.time() - time.monotonic())' >"$out/offset"
events="kvm/kvm_exit kvm/kvm_entry kvm/kvm_page_fault sched/sched_switch sched/sched_wakeup"
for r in $(seq 1 "$rounds"); do
  echo 0 >$T/tracing_on; echo >$T/trace; echo 40000 >$T/buffer_size_kb; echo mono >$T/trace_clock
  for e in $events; do echo 1 >$T/events/$e/enable; done
  echo 1 >$T/tracing_on
  c run --rm --runtime io.containerd.husk.v2 localhost/busybox:demo "r$r" true >/dev/null 2>&1
  echo 0 >$T/tracing_on
  cat $T/per_cpu/cpu*/trace | grep -v "^#" | sort -k4 -n >"$out/trace-$r.txt"
  echo "round $r: $(wc -l <"$out/trace-$r.txt") events"
done
for e in $events; do echo 0 >$T/events/$e/enable; done
{ echo "templates: $(findmnt -no FSTYPE,OPTIONS -T "$base/templates")"
  for f in "$base"/templates/*/memory; do
    echo "memory file: $(du -k --apparent-size "$f" | cut -f1) KiB apparent, $(du -k "$f" | cut -f1) KiB allocated"
  done
  grep -E "Shmem|FilePmd|AnonHuge" /proc/meminfo; } | tee "$out/memory.txt"
rmdir $T 2>/dev/null || true
grep -E "husk-vmm started|vCPUs running|guest agent is ready" "$base/containerd.log" | cut -c1-400 >"$out/log.txt"
