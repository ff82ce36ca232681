#!/usr/bin/env bash
# The main job, as far as it is built: husk-vmm boots the husk guest kernel with a husk-image
# initramfs where hardware KVM exists (natively, or in the nested test host), and the guest's
# kernel version is printed. (Containers through containerd arrive with the agent and the shim.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
cd "$repo"
"$TESTHOST" --timeout 300 -- "
  set -e
  dir=\$(mktemp -d)
  trap 'rm -rf \"\$dir\"' EXIT
  printf '{\"kernel\":\"%s\",\"initramfs\":\"%s\",\"vcpus\":2,\"memory_mib\":256,\"extra_cmdline\":\"quiet\",\"serial_log\":\"%s\"}' \
    '$HUSK_KERNEL' '$HUSK_TEST_IMAGE' \"\$dir/console\" > \"\$dir/vm.json\"
  start=\$(date +%s%N)
  timeout 120 '$HUSK_VMM' --config \"\$dir/vm.json\"
  ms=\$(( (\$(date +%s%N) - start) / 1000000 ))
  line=\$(grep 'HUSK-TEST-INIT ready' \"\$dir/console\") || { cat \"\$dir/console\"; echo 'demo: the guest did not reach its init' >&2; exit 1; }
  echo \"\$line\"
  echo \"husk-vmm booted guest kernel \$(echo \"\$line\" | sed -n 's/.*kernel=\([^ ]*\).*/\1/p') on 2 vCPUs and the guest shut down after \${ms} ms (test host kernel: \$(uname -r))\""
