#!/usr/bin/env bash
# Runs the tests that once failed intermittently (the "former flakes") RUNS times each, LOOPS
# runs at a time, and prints passes and failures per test. Run it next to ./scripts/test.sh
# (or any load) to reproduce the CI machine's pressure; a failure keeps its output in
# $OUT/<test>.<run>.log.
# Usage (as root, after ./scripts/setup.sh): ./scripts/stress.sh [RUNS] [LOOPS]
#   e.g. ./scripts/stress.sh 50 2
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
LOOPS=${2:-2}
OUT=${OUT:-$(mktemp -d /tmp/hagw-stress.XXXXXX)}
mkdir -p "$OUT"

cargo build -q -p hagw --locked
cargo test -q -p hagw-core -p hagw -p hagw-e2e --locked --no-run 2>/dev/null
# The newest test binary of a target (what `cargo test --no-run` just built).
binary() { ls -t "target/debug/deps/$1"-* | grep -v '\.d$' | head -1; }

# name | binary | filter (exact test or module prefix). What each once hit:
#   ETXTBSY executing a copied file; a fixed metrics port; a leaked looping child and a state
#   path seen before its files; a read-only remount of thousands of namespace mounts.
TESTS=(
  "dead-keepalived|$(binary agent)|a_dead_keepalived_makes_its_router_standby"
  "metrics|$(binary metrics)|metrics_follow_a_standby_hold_and_a_failover"
  "neutron-follow|$(binary hagw)|agent::neutron::tests"
  "core-processes|$(binary hagw_core)|liveness"
  "unit-sandbox|$(binary unit_sandbox)|the_units_sandbox_converges_a_primary_and_a_standby_on_ovs"
)

run_one() {
  local name=$1 bin=$2 filter=$3 i=$4
  if HAGW_BIN=$PWD/target/debug/hagw "$bin" "$filter" >"$OUT/$name.$i.log" 2>&1; then
    rm -f "$OUT/$name.$i.log"; echo "$name passed" >>"$OUT/results"
  else
    echo "$name FAILED" >>"$OUT/results"
  fi
}

for entry in "${TESTS[@]}"; do
  IFS='|' read -r name bin filter <<<"$entry"
  for i in $(seq "$RUNS"); do
    run_one "$name" "$bin" "$filter" "$i" &
    while [ "$(jobs -rp | wc -l)" -ge "$LOOPS" ]; do wait -n || true; done
  done
done
wait
echo "== $RUNS runs per test, $LOOPS at a time:"
sort "$OUT/results" | uniq -c
if grep -q FAILED "$OUT/results"; then
  echo "== failed runs' output: $OUT/*.log"; exit 1
fi
