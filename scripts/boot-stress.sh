#!/usr/bin/env bash
# Boots the test init many times, PAR guests at once, under husk-vmm and under QEMU's microvm
# (the same kernel and initramfs, rounds interleaved), and counts the boots that reach the init's
# marker, that die (triple fault / unexpected exit) and that hang. It tells a husk bug from a
# fault of the KVM underneath: on the nested test host (QEMU TCG emulating SVM) both VMMs lose a
# few percent of parallel boots in early kernel setup, at the same rate (issue 3).
# With HUSK_STRESS_PIN=1 each guest's vCPU thread is pinned to one test host CPU (guest i on
# CPU i % 2: husk-vmm's `vcpu_affinity`, QEMU under taskset), which is how the e2e tests run.
# Usage: scripts/boot-stress.sh [ROUNDS] [PAR]      (defaults 10 rounds of 4 guests)
set -euo pipefail

if [ "${1:-}" != "--inside" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
  exec "$TESTHOST" --timeout "${HUSK_STRESS_TIMEOUT:-3000}" -- \
    "HUSK_KERNEL=$HUSK_KERNEL HUSK_TEST_IMAGE=$HUSK_TEST_IMAGE HUSK_VMM=$HUSK_VMM \
     HUSK_STRESS_PIN=${HUSK_STRESS_PIN:-0} \
     $repo/scripts/boot-stress.sh --inside ${1:-10} ${2:-4}"
fi
rounds=$2
par=$3
hang_secs=120
work=$(mktemp -d /tmp/husk-boot-stress.XXXXXX)
trap 'rm -rf "$work"' EXIT
declare -A ok=([husk]=0 [qemu]=0) died=([husk]=0 [qemu]=0) hung=([husk]=0 [qemu]=0)

start_one() { # vmm index
  local dir=$work/$1-$2 affinity='' pin=()
  mkdir -p "$dir"
  rm -f "$dir/console.log"
  if [ "$HUSK_STRESS_PIN" = 1 ]; then
    affinity=",\"vcpu_affinity\":[$(($2 % 2))]"
    pin=(taskset -c $(($2 % 2)))
  fi
  if [ "$1" = husk ]; then
    cat > "$dir/vm.json" <<EOF
{"kernel":"$HUSK_KERNEL","initramfs":"$HUSK_TEST_IMAGE","vcpus":1,"memory_mib":128,"serial_log":"$dir/console.log"$affinity}
EOF
    "$HUSK_VMM" --config "$dir/vm.json" > "$dir/stdout" 2> "$dir/stderr" &
  else
    "${pin[@]}" qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -enable-kvm -cpu host -smp 1 -m 128 \
      -nodefaults -no-user-config -display none -serial "file:$dir/console.log" -no-reboot \
      -kernel "$HUSK_KERNEL" -initrd "$HUSK_TEST_IMAGE" -append "console=ttyS0 reboot=t panic=-1" \
      > "$dir/stdout" 2> "$dir/stderr" &
  fi
  echo $!
}

# Prints a process's threads with state, wait channel and kernel stack (what a hang looks like).
dump() {
  for t in /proc/"$1"/task/*; do
    echo "    thread $(cat "$t/comm") state=$(cut -d' ' -f3 "$t/stat") wchan=$(cat "$t/wchan")"
    sed 's/^/      /' "$t/stack" 2>/dev/null | head -8 || true
  done
}

round() { # vmm round-number
  local vmm=$1 r=$2 pids=() killed=() i s alive dir
  for i in $(seq 1 "$par"); do pids[i]=$(start_one "$vmm" "$i"); done
  for s in $(seq 1 "$hang_secs"); do
    alive=0
    for i in $(seq 1 "$par"); do kill -0 "${pids[i]}" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 1
  done
  for i in $(seq 1 "$par"); do
    dir=$work/$vmm-$i
    if kill -0 "${pids[i]}" 2>/dev/null; then
      if grep -q 'HUSK-TEST-INIT' "$dir/console.log"; then
        echo "$vmm round $r guest $i: reached the marker but did not exit in ${hang_secs}s"
      else
        echo "$vmm round $r guest $i: HUNG; console ends with: $(tail -1 "$dir/console.log" | cut -c1-100)"
      fi
      dump "${pids[i]}"
      kill -KILL "${pids[i]}"
      killed[i]=1
    fi
  done
  wait
  for i in $(seq 1 "$par"); do
    dir=$work/$vmm-$i
    if grep -q 'HUSK-TEST-INIT' "$dir/console.log"; then
      ok[$vmm]=$((ok[$vmm] + 1))
    elif [ -n "${killed[i]:-}" ]; then
      hung[$vmm]=$((hung[$vmm] + 1))
    else
      died[$vmm]=$((died[$vmm] + 1))
      echo "$vmm round $r guest $i: DIED: $(tail -1 "$dir/stderr" | cut -c1-160)"
      echo "    console ends with: $(tail -1 "$dir/console.log" | cut -c1-100)"
    fi
  done
}

echo "boot-stress: $rounds rounds of $par parallel boots per VMM, vCPUs pinned: $HUSK_STRESS_PIN"
for r in $(seq 1 "$rounds"); do
  round husk "$r"
  round qemu "$r"
  echo "after round $r: husk ok=${ok[husk]} died=${died[husk]} hung=${hung[husk]}; qemu ok=${ok[qemu]} died=${died[qemu]} hung=${hung[qemu]}"
done
printf '%-6s %6s %6s %6s %6s %8s\n' vmm boots ok died hung failed%
for v in husk qemu; do
  n=$((rounds * par))
  bad=$((died[$v] + hung[$v]))
  printf '%-6s %6d %6d %6d %6d %7d%%\n' "$v" "$n" "${ok[$v]}" "${died[$v]}" "${hung[$v]}" $((100 * bad / n))
done
