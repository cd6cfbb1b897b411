#!/usr/bin/env bash
# The hagw demo: installs what it needs, builds hagw, and runs the two-node keepalived
# testbed in throw-away network namespaces (removed afterwards, also on Ctrl-C): first
# without hagw (the bug), then with hagw on both nodes. Usage (as root):
#   ./scripts/demo.sh [--without-hagw | --with-hagw] [--linuxbridge | --generic]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --quiet --locked -p hagw -p hagw-e2e --bins
exec "${CARGO_TARGET_DIR:-target}/debug/hagw-demo" "$@"
