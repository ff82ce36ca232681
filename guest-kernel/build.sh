#!/usr/bin/env bash
# Builds husk's guest kernel: Debian's linux-source-6.1, `make tinyconfig`, the fragments in
# fragments/*.config merged on top, then a check that every requested option made it into the
# final .config (Kconfig silently drops unknown options and options with unmet dependencies).
#
# The result is cached outside the work tree, keyed by the source tarball's hash, the fragments
# and this script, so a cache hit costs a hash of the tarball and nothing else.
# Prints the path of the ELF vmlinux on stdout; progress and errors go to stderr.
#
# Environment: HUSK_CACHE_DIR (default /var/cache/husk), HUSK_KERNEL_SOURCE (default
# /usr/src/linux-source-6.1.tar.xz), HUSK_KERNEL_FRAGMENTS (default: fragments/ beside this
# script), HUSK_KERNEL_JOBS (default: nproc).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${HUSK_CACHE_DIR:-/var/cache/husk}
src_tar=${HUSK_KERNEL_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
jobs=${HUSK_KERNEL_JOBS:-$(nproc)}

say() { echo "guest-kernel: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ -f "$src_tar" ] || die "kernel source '$src_tar' not found; install Debian's package with 'apt-get install linux-source-6.1' (or set HUSK_KERNEL_SOURCE to a linux-6.1 .tar.xz)"
shopt -s nullglob
frag_dir=${HUSK_KERNEL_FRAGMENTS:-$here/fragments}
fragments=("$frag_dir"/*.config)
[ ${#fragments[@]} -gt 0 ] || die "no fragments (*.config) in $frag_dir"

src_hash=$(sha256sum "$src_tar" | cut -c1-16)
key=$( { echo "$src_hash"; for f in "${fragments[@]}"; do echo "== $(basename "$f")"; cat "$f"; done; cat "$0"; } | sha256sum | cut -c1-16)
out="$cache/kernel/$key"
if [ -f "$out/vmlinux" ]; then
  say "cache hit ($out)"
  echo "$out/vmlinux"
  exit 0
fi

mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock"
flock 9
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

# 1. Source tree, unpacked once per tarball.
srcdir="$cache/kernel-src/$src_hash"
if [ ! -f "$srcdir/.unpacked" ]; then
  say "unpacking $src_tar (once per source version)"
  rm -rf "$srcdir"; mkdir -p "$srcdir"
  tar -xf "$src_tar" -C "$srcdir" --strip-components=1
  touch "$srcdir/.unpacked"
fi

# 2. Configuration: tinyconfig + fragments, in a build directory of this configuration's own.
#    It is removed when the configuration is rejected or the build succeeds, and kept (with its
#    log) when the compiler fails.
build="$cache/kernel-build/$key"
rm -rf "$build"
mkdir -p "$build"
log="$build/build.log"
: >"$log"
run_logged() {
  if ! "$@" >>"$log" 2>&1; then
    say "'$*' failed; last lines of $log:"
    tail -n 40 "$log" >&2
    rm -rf "$build"
    exit 1
  fi
}
say "configuring (tinyconfig + ${#fragments[@]} fragments)"
run_logged make -C "$srcdir" O="$build" tinyconfig
run_logged env KCONFIG_CONFIG="$build/.config" "$srcdir/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "${fragments[@]}"
run_logged make -C "$srcdir" O="$build" olddefconfig

# 3. Every option a fragment asks for must be in the final .config, with the value asked for.
missing=0
for f in "${fragments[@]}"; do
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=n) want="# ${line%=n} is not set"; name=${line%=n} ;;
      CONFIG_*=*) want=$line; name=${line%%=*} ;;
      *) continue ;;
    esac
    if ! grep -qxF "$want" "$build/.config" && ! { [ "${line#*=}" = n ] && ! grep -q "^$name=" "$build/.config"; }; then
      got=$(grep -E "^$name=|^# $name is not set" "$build/.config" || echo "absent")
      say "option '$line' requested by fragments/$(basename "$f") is not in the final .config (found: $got): unknown option or unmet dependency"
      missing=$((missing + 1))
    fi
  done < <(grep -E '^CONFIG_' "$f" | sed 's/[[:space:]]*$//')
done
if [ "$missing" -ne 0 ]; then
  rm -rf "$build"
  die "$missing requested option(s) missing from the final .config"
fi

# 4. Build, with a progress line every 20 s.
say "building vmlinux with $jobs jobs (log: $log); this takes 10-15 minutes on 2 cores"
start=$(date +%s)
make -C "$srcdir" O="$build" -j"$jobs" vmlinux >>"$log" 2>&1 &
make_pid=$!
trap 'kill $make_pid 2>/dev/null || true' EXIT
while kill -0 "$make_pid" 2>/dev/null; do
  sleep 20
  kill -0 "$make_pid" 2>/dev/null || break
  say "  $(( $(date +%s) - start ))s: $(grep -c '^  CC' "$log") files compiled, last: $(grep '^  [A-Z]' "$log" | tail -n 1 | awk '{print $2}')"
done
if ! wait "$make_pid"; then
  trap - EXIT
  say "kernel build failed; last lines of $log:"
  tail -n 60 "$log" >&2
  exit 1
fi
trap - EXIT

tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
cp "$build/vmlinux" "$tmp/vmlinux"
cp "$build/.config" "$tmp/config"
make -s -C "$srcdir" O="$build" kernelrelease >"$tmp/release" 2>/dev/null || true
rm -rf "$out"; mv "$tmp" "$out"
rm -rf "$build"
say "built in $(( $(date +%s) - start ))s: $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1), $(cat "$out/release"))"
echo "$out/vmlinux"
