#!/usr/bin/env bash
# Runs husk's benchmarks where hardware KVM exists (natively or in the nested test host), prints
# a table and appends one JSON object per metric to target/bench/results.jsonl.
# Usage: scripts/bench.sh [BENCH...]   (all when none is named)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
cd "$repo"
mkdir -p target/bench
# The containerd the container benchmarks (ctr, cri, churn) run on: as in make e2e, the newest
# upstream release in ../shared/containerd when it is there (current Kubernetes runs containerd
# 2.x, and cri's sandbox API figures need it), else the host's; HUSK_CONTAINERD_BIN overrides.
shared=${HUSK_SHARED_CONTAINERD:-$repo/../shared/containerd}
shared=$(cd "$shared" 2>/dev/null && pwd || echo "$shared")
if [ -z "${HUSK_CONTAINERD_BIN-}" ] && [ -x "$shared/v2.3.4/bin/containerd" ]; then
  export HUSK_CONTAINERD_BIN="$shared/v2.3.4/bin"
fi
echo "bench: containerd $("${HUSK_CONTAINERD_BIN:-/usr/bin}/containerd" --version 2>/dev/null | cut -d' ' -f3)" \
  "(${HUSK_CONTAINERD_BIN:-on the host PATH})"
# churn alone runs in a one-vCPU test host, as in make e2e (scripts/e2e.sh, testhost_args: the
# test host's kernel dies of an IPI to a CPU in guest mode); runc and husk share it alike.
cpus=()
[ "$*" != churn ] || cpus=(--cpus 1)
# HUSK_BENCH_TRACE=1: cri records each restored pod's start (tests/src/bench_cri/trace.rs) into
# target/bench/trace, for scripts/probe/trace-restore.py; a diagnostic that slows what it records.
trace=()
[ "${HUSK_BENCH_TRACE:-}" != 1 ] || trace=(--env "HUSK_BENCH_TRACE=$repo/target/bench/trace")
# husk-testhost exits 75 when the test host itself failed under the run (it wedged, or its kernel
# died: the nested host's known failures, docs/testing.md); husk-bench writes its records only at
# the end, so such a run left none, and it runs again in a fresh test host, once, saying so.
for attempt in 1 2; do
  rc=0
  "$TESTHOST" "${cpus[@]}" --timeout "${HUSK_BENCH_TIMEOUT:-3000}" --rw "$repo/target/bench" \
    --env "HUSK_BENCH_LOGS=$repo/target/bench/logs" "${trace[@]}" -- \
    "$repo/target/release/husk-bench --out $repo/target/bench/results.jsonl $*" || rc=$?
  [ "$rc" = 75 ] && [ "$attempt" = 1 ] || exit "$rc"
  echo "bench: *** the test host failed under the run (exit 75, output above): running it again in a fresh test host ***" >&2
done
