# Sourced by the scripts that boot guests: the artifact paths, as absolute paths.
# Expects `make build image kernel` to have run (the Makefile targets depend on them).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HUSK_KERNEL=$("$repo/guest-kernel/build.sh")
HUSK_TEST_IMAGE="$repo/target/images/test-init.cpio.gz"
HUSK_VMM="$repo/target/release/husk-vmm"
TESTHOST="$repo/target/release/husk-testhost"
# husk-agent (static; the guest's /init and the host-mode tests' agent) and its images.
HUSK_AGENT="$repo/target/x86_64-unknown-linux-gnu/guest/husk-agent"
HUSK_INITRD="$repo/target/images/husk-initrd.img"
HUSK_AGENT_TEST_IMAGE="$repo/target/images/husk-agent-test.img"
# The static test init, also the hostile-guest suite's in-container tool (`husk-test-init hostile`).
HUSK_TEST_INIT="$repo/target/x86_64-unknown-linux-gnu/guest/husk-test-init"
export HUSK_KERNEL HUSK_TEST_IMAGE HUSK_VMM HUSK_AGENT HUSK_INITRD HUSK_AGENT_TEST_IMAGE HUSK_TEST_INIT
for f in "$HUSK_KERNEL" "$HUSK_TEST_IMAGE" "$HUSK_VMM" "$TESTHOST" "$HUSK_AGENT" "$HUSK_AGENT_TEST_IMAGE" "$HUSK_TEST_INIT"; do
  [ -f "$f" ] || { echo "missing $f: run 'make build image kernel' first" >&2; exit 1; }
done
