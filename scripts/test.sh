#!/usr/bin/env bash
# Runs every hagw check: formatting, lints, the chart, the container image, unit and property
# tests, and the end-to-end tests in network namespaces with real OVS and keepalived, and on a
# real Kubernetes node (kubelet + containerd). Installs what it needs first.
# Usage (as root): ./scripts/test.sh
# Knobs: HAGW_TRIALS (randomized race trials per strategy, CI default), PROPTEST_CASES.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
# Kubernetes v1.34 built from its Go modules (+ containerd for a real node): the operator tests
# run its control plane alone, the pod tests a whole node. Built once, cached outside the clone.
./scripts/k8s-node.sh install

export CARGO_TERM_COLOR=never
echo "== fmt";    cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== chart";  ./scripts/chart-check.sh
echo "== build";  cargo build --workspace --locked
# The image from the binary just built (debug symbols stripped; releases use
# `cargo build --release`): built offline, run in a throwaway containerd, and compared with the
# user Containerfile built by buildah.
echo "== image"
mkdir -p target/image-bin
objcopy --strip-debug target/debug/hagw target/image-bin/hagw
HAGW_BIN=target/image-bin/hagw HAGW_IMAGE_TAG=ci ./scripts/image.sh all
echo "== test";   cargo test --workspace --locked --no-fail-fast
echo "== all tests passed"
