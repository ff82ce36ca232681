# Sourced by the scripts that boot guests: the artifact paths, as absolute paths.
# Expects `make build image kernel` to have run (the Makefile targets depend on them).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HUSK_KERNEL=$("$repo/guest-kernel/build.sh")
HUSK_TEST_IMAGE="$repo/target/images/test-init.cpio.gz"
HUSK_VMM="$repo/target/release/husk-vmm"
TESTHOST="$repo/target/release/husk-testhost"
export HUSK_KERNEL HUSK_TEST_IMAGE HUSK_VMM
for f in "$HUSK_KERNEL" "$HUSK_TEST_IMAGE" "$HUSK_VMM" "$TESTHOST"; do
  [ -f "$f" ] || { echo "missing $f: run 'make build image kernel' first" >&2; exit 1; }
done
