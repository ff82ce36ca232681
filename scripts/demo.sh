#!/usr/bin/env bash
# The main job, as far as it is built: boot the husk guest kernel with a husk-image initramfs
# where hardware KVM exists (natively, or in the nested test host) and print the guest's kernel.
# QEMU's microvm machine boots it until husk-vmm can.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
cd "$repo"
"$TESTHOST" --timeout 300 -- "
  out=\$(timeout 120 qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu host \
    -smp 1 -m 256 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
    -kernel $HUSK_KERNEL -initrd $HUSK_TEST_IMAGE -append 'console=ttyS0 reboot=t panic=-1 quiet')
  echo \"\$out\" | grep 'HUSK-TEST-INIT ready' || { echo \"\$out\"; echo 'demo: the guest did not reach its init' >&2; exit 1; }
  echo \"guest kernel: \$(echo \"\$out\" | sed -n 's/.*kernel=\([^ ]*\).*/\1/p') (test host: \$(uname -r))\""
