#!/usr/bin/env bash
# Installs husk under a prefix (make install PREFIX=/usr/local):
#   <prefix>/bin/containerd-shim-husk-v2   the shim (runtime_type io.containerd.husk.v2)
#   <prefix>/bin/husk-vmm                  the VMM
#   <prefix>/share/husk/vmlinux            the guest kernel
#   <prefix>/share/husk/husk-initrd.img    the guest image (husk-agent as /init)
#   <prefix>/share/husk/config.toml.example
# The shim finds the VMM, kernel and image relative to its own directory, so no config file is
# needed; copy the example to /etc/husk/config.toml to change anything. containerd finds the
# shim through its PATH: put <prefix>/bin there, or use the runtime's absolute path.
# Expects `make build image kernel` to have run (the Makefile's install target depends on them).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${1:?usage: scripts/install.sh PREFIX}
kernel=$("$repo/guest-kernel/build.sh")
sources=(
  "$repo/target/release/containerd-shim-husk-v2:bin/containerd-shim-husk-v2:0755"
  "$repo/target/release/husk-vmm:bin/husk-vmm:0755"
  "$kernel:share/husk/vmlinux:0644"
  "$repo/target/images/husk-initrd.img:share/husk/husk-initrd.img:0644"
  "$repo/runtimeclass/config/husk-config.toml:share/husk/config.toml.example:0644"
)
for s in "${sources[@]}"; do
  src=${s%%:*}
  [ -f "$src" ] || { echo "install: missing $src (run 'make build image kernel')" >&2; exit 1; }
done
for s in "${sources[@]}"; do
  IFS=: read -r src dst mode <<<"$s"
  install -D -m "$mode" "$src" "$prefix/$dst"
done
echo "husk installed under $prefix:"
( cd "$prefix" && ls -l bin/containerd-shim-husk-v2 bin/husk-vmm share/husk/ | sed 's/^/  /' )
