#!/usr/bin/env bash
# The main job: a container run by containerd with `--runtime io.containerd.husk.v2`, inside its
# own husk micro-VM, printing the guest's kernel line.
#
# `make demo` has built everything (build image kernel); this script installs husk into a
# private prefix (target/demo/prefix), builds a busybox OCI image from the host's static busybox,
# and, where hardware KVM exists (natively, or in the nested test host), starts a private
# containerd (own root, state and sockets under /run/husk-demo.*, CRI off, overlayfs), imports
# the image and runs
#   ctr run --rm --runtime io.containerd.husk.v2 localhost/busybox:demo husk-demo uname -a
# next to the same under runc, so the two kernel lines can be compared.
set -euo pipefail

if [ "${1:-}" = "--inside" ]; then
  # Runs where /dev/kvm is hardware virtualization. $2 = prefix, $3 = image archive.
  prefix=$2 image=$3
  base=$(mktemp -d /run/husk-demo.XXXXXX)
  ctrd_pid=
  cleanup() {
    set +e
    if [ -n "$ctrd_pid" ]; then
      ctr --address "$base/containerd.sock" task kill -s SIGKILL husk-demo >/dev/null 2>&1 || true
      kill "$ctrd_pid" 2>/dev/null || true
      wait "$ctrd_pid" 2>/dev/null || true
    fi
    { grep -o " $base[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$base"
  }
  trap cleanup EXIT
  cat >"$base/config.toml" <<EOF
version = 2
root = "$base/root"
state = "$base/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$base/containerd.sock"
[ttrpc]
  address = "$base/containerd.sock.ttrpc"
[debug]
  address = "$base/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$base/opt"
EOF
  # Only what differs from the defaults: nested boots are slow; state next to containerd's.
  cat >"$base/husk.toml" <<EOF
boot_timeout_secs = 120
state_dir = "$base/hs"
EOF
  PATH="$prefix/bin:$PATH" HUSK_CONFIG="$base/husk.toml" containerd --config "$base/config.toml" \
    >"$base/containerd.log" 2>&1 &
  ctrd_pid=$!
  c() { ctr --address "$base/containerd.sock" "$@"; }
  for _ in $(seq 1 300); do c version >/dev/null 2>&1 && break; sleep 0.2; done
  c version >/dev/null || { tail -20 "$base/containerd.log"; echo "demo: containerd did not start" >&2; exit 1; }
  c image import "$image" >/dev/null
  start=$(date +%s%N)
  if ! guest=$(c run --rm --runtime io.containerd.husk.v2 localhost/busybox:demo husk-demo uname -a); then
    echo "demo: the husk container failed; containerd's log (with the shim's):" >&2
    tail -40 "$base/containerd.log" >&2
    exit 1
  fi
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  host=$(c run --rm localhost/busybox:demo runc-demo uname -a)
  echo "husk (VM):   $guest"
  echo "runc (host): $host"
  echo "demo: ctr run --rm --runtime io.containerd.husk.v2 took ${ms} ms (boot, run, teardown)"
  [ "$guest" != "$host" ] || { echo "demo: the husk container saw the host's kernel" >&2; exit 1; }
  exit 0
fi

source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
cd "$repo"
prefix="$repo/target/demo/prefix"
scripts/install.sh "$prefix" >/dev/null

# A busybox OCI image (one layer) from the host's static busybox, named localhost/busybox:demo.
img="$repo/target/demo/image"
rm -rf "$img" && mkdir -p "$img/rootfs/bin" "$img/blobs/sha256"
cp /bin/busybox "$img/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$img/rootfs/bin/$a"; done
mkdir -p "$img/rootfs/"{etc,tmp,proc,sys,dev,root}
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$img/rootfs/etc/passwd"
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$img/blobs/sha256/$d"; echo "$d"; }
tar -C "$img/rootfs" --owner=0 --group=0 --numeric-owner -cf "$img/layer.tar" .
diff_id=$(sha256sum "$img/layer.tar" | cut -d' ' -f1)
gzip -n "$img/layer.tar"
layer_size=$(stat -c %s "$img/layer.tar.gz")
layer=$(blob "$img/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" >"$img/config.json"
config_size=$(stat -c %s "$img/config.json")
config=$(blob "$img/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" >"$img/manifest.json"
manifest_size=$(stat -c %s "$img/manifest.json")
manifest=$(blob "$img/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"localhost/busybox:demo","org.opencontainers.image.ref.name":"demo"}}]}' \
  "$manifest" "$manifest_size" >"$img/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$img/oci-layout"
tar -C "$img" -cf "$repo/target/demo/busybox-oci.tar" oci-layout index.json blobs

"$TESTHOST" --timeout 900 -- "bash '$repo/scripts/demo.sh' --inside '$prefix' '$repo/target/demo/busybox-oci.tar'"
