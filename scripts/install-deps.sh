#!/usr/bin/env bash
# Installs the Debian packages husk needs to build, test and demo itself.
# Idempotent: a package already present costs nothing; apt runs only when something is missing.
set -euo pipefail

packages=(
  # guest kernel build
  linux-source-6.1 build-essential bc flex bison libelf-dev xz-utils
  # guest image and nested test host
  busybox-static cpio qemu-system-x86 zstd kmod
  # containerd and its peers for the end-to-end tests and the demo
  containerd runc containernetworking-plugins iproute2 iptables procps
  # agent protocol generation
  protobuf-compiler
  # husk-agent: seccomp from the OCI spec, linked statically into the guest's /init
  libseccomp-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
for attempt in $(seq 1 30); do
  if apt-get update -q >"$apt_log" 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1; then
    echo "install-deps: done"
    exit 0
  fi
  if grep -q 'Could not get lock' "$apt_log"; then
    sleep 10
    continue
  fi
  break
done
echo "install-deps: apt-get failed (attempt $attempt); its log:" >&2
tail -n 40 "$apt_log" >&2
exit 1
