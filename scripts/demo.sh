#!/usr/bin/env bash
# The hagw demo: installs what it needs, builds hagw, and runs the demo scenario in
# throw-away network namespaces (removed afterwards). Usage (as root): ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --quiet --locked -p hagw -p hagw-e2e --bins
exec target/debug/hagw-demo "$@"
