#!/usr/bin/env bash
# Coverage-guided fuzzing of husk-vmm's guest-facing parsers (hypervisor/fuzz, cargo-fuzz on
# nightly). Each target runs FUZZ_SECONDS (default 60) from its seed corpus
# hypervisor/fuzz/corpus/<target>/ (read only: new inputs go to the working corpus
# hypervisor/fuzz/target/corpus/<target>/); crashes and timeouts are saved under
# hypervisor/fuzz/artifacts/<target>/, which `cargo test -p husk-hypervisor --test fuzz_corpus`
# replays on stable. Prints one summary line per target; exits 1 if any target crashed or
# timed out. FUZZ_TARGETS="chain mmio" runs a subset; FUZZ_JOBS (default 1) build jobs.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-chain vsock_packet vsock_connection net_header fuse_request mmio hybrid_handshake balloon}
export CARGO_BUILD_JOBS=${FUZZ_JOBS:-1}

NIGHTLY=$(rustup toolchain list | awk '/^nightly/ {print $1; exit}')
if [ -z "$NIGHTLY" ]; then
	echo "fuzz: no nightly toolchain (rustup toolchain install nightly)" >&2
	exit 2
fi
if ! cargo "+$NIGHTLY" fuzz --version >/dev/null 2>&1; then
	echo "fuzz: installing cargo-fuzz for $NIGHTLY" >&2
	cargo "+$NIGHTLY" install cargo-fuzz --locked
fi

cd "$ROOT/hypervisor"
LOGS=fuzz/target/logs
mkdir -p "$LOGS"
# One build for every target, so the timed runs only fuzz.
cargo "+$NIGHTLY" fuzz build >"$LOGS/build.log" 2>&1 || {
	tail -n 40 "$LOGS/build.log" >&2
	echo "fuzz: build failed (full log: hypervisor/$LOGS/build.log)" >&2
	exit 2
}

# The fuse_request target serves a scratch directory under TMPDIR: keep it under target/.
scratch=$ROOT/hypervisor/fuzz/target/tmp
failed=0
for t in $TARGETS; do
	work=$ROOT/hypervisor/fuzz/target/corpus/$t
	artifacts=$ROOT/hypervisor/fuzz/artifacts/$t
	mkdir -p "$work" "$artifacts"
	before=$(find "$artifacts" -type f | wc -l)
	status=0
	mkdir -p "$scratch"
	TMPDIR=$scratch cargo "+$NIGHTLY" fuzz run "$t" "$work" "$ROOT/hypervisor/fuzz/corpus/$t" -- \
		-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$artifacts/" \
		>"$LOGS/$t.log" 2>&1 || status=$?
	# A crash inside fuse_request's chrooted worker thread writes its input relative to that
	# thread's root, the share under the scratch directory: keep it.
	find "$scratch" -path "*$artifacts/*" -type f -exec mv -t "$artifacts" {} + 2>/dev/null || true
	rm -rf "$scratch"
	after=$(find "$artifacts" -type f | wc -l)
	crashes=$((after - before))
	if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
		crashes=1 # it died without saving an input (a harness or build problem): count it
	fi
	execs=$(awk '/stat::average_exec_per_sec/ {v=$2} END {print v+0}' "$LOGS/$t.log")
	cov=$(grep -oE 'cov: [0-9]+' "$LOGS/$t.log" | tail -n 1 | awk '{print $2+0}')
	corp=$(grep -oE 'corp: [0-9]+' "$LOGS/$t.log" | tail -n 1 | awk '{print $2+0}')
	echo "fuzz $t: ${execs:-0} execs/s, ${cov:-0} cov, corpus ${corp:-0} files, crashes $crashes"
	if [ "$crashes" -ne 0 ]; then
		failed=1
		echo "  log: hypervisor/$LOGS/$t.log; inputs: $artifacts/" >&2
		grep -m 5 -E "panicked at|ERROR: libFuzzer|SUMMARY" "$LOGS/$t.log" | sed 's/^/  /' >&2 || true
	fi
done

exit "$failed"
