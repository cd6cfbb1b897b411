#!/usr/bin/env bash
# Runs every hagw check: formatting, lints, unit and property tests, and the end-to-end
# tests in network namespaces with real OVS and keepalived. Installs what it needs first.
# Usage (as root): ./scripts/test.sh
# Knobs: HAGW_TRIALS (randomized race trials per strategy, CI default), PROPTEST_CASES.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
# A real kube-apiserver + etcd for the operator tests (built once, cached outside the clone).
./scripts/kube-apiserver.sh install


export CARGO_TERM_COLOR=never
echo "== fmt";    cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== chart";  ./scripts/chart-check.sh
echo "== build";  cargo build --workspace --locked
echo "== test";   cargo test --workspace --locked --no-fail-fast
echo "== all tests passed"
