#!/usr/bin/env bash
# Runs husk's benchmarks where hardware KVM exists (natively or in the nested test host), prints
# a table and appends one JSON object per metric to target/bench/results.jsonl.
# Usage: scripts/bench.sh [BENCH...]   (all when none is named)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/guest-env.sh"
cd "$repo"
mkdir -p target/bench
"$TESTHOST" --timeout "${HUSK_BENCH_TIMEOUT:-3000}" --rw "$repo/target/bench" -- \
  "$repo/target/release/husk-bench --out $repo/target/bench/results.jsonl $*"
