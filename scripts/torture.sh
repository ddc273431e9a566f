#!/usr/bin/env bash
# The kill -9 torture trial of issue 7: TRIALS times (default 100), `ttv build` against the fake
# Google server is killed with SIGKILL at a random moment, then built again (and forced where it
# reports an uncertain Veo submission); prints the counts. See crash::torture_kill_nine in
# tests/it/crash.rs. Trials are numbered from TTV_TORTURE_FIRST (default 0); each trial's
# latencies and kill delay are drawn from its number.
#
# The trials run cargo's ttv binary: when CARGO_TARGET_DIR is shared with other builds, give the
# run a folder of its own (CARGO_TARGET_DIR=/tmp/ttv-torture scripts/torture.sh), or a build
# elsewhere may replace the binary mid-run (the test checks that it did not).
#
#   scripts/torture.sh [TRIALS] [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-100}
profile=()
if [[ ${2:-} == --release ]]; then
    profile=(--release)
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
TTV_TORTURE_TRIALS=$trials cargo test "${profile[@]}" --test it crash::torture_kill_nine \
    -- --ignored --nocapture 2>&1 | tee "$log" || status=$?
echo
grep '^torture:' "$log" || echo "torture: no summary line (the run did not get that far)"
exit "$status"
