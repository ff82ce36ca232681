#!/usr/bin/env bash
# Runs husk's benchmarks where hardware KVM exists (natively or in the nested test host), prints
# a table and appends one JSON object per metric to target/bench/results.jsonl.
# Usage: scripts/bench.sh [BENCH...]   (all when none is named)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
cd "$repo"
mkdir -p target/bench
# churn alone runs in a one-vCPU test host, as in make e2e (scripts/e2e.sh, testhost_args: the
# test host's kernel dies of an IPI to a CPU in guest mode); runc and husk share it alike.
cpus=()
[ "$*" != churn ] || cpus=(--cpus 1)
"$TESTHOST" "${cpus[@]}" --timeout "${HUSK_BENCH_TIMEOUT:-3000}" --rw "$repo/target/bench" -- \
  "$repo/target/release/husk-bench --out $repo/target/bench/results.jsonl $*"
