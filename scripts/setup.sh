#!/usr/bin/env bash
# Installs what hagw's demo and tests need on Debian 12, idempotently: Debian packages
# (skipped when already present) and a Rust toolchain check. Run as root.
set -euo pipefail

PACKAGES=(
  iproute2 tcpdump tshark iputils-ping iputils-arping ethtool nftables
  openvswitch-switch keepalived python3-venv
  mmdebstrap binutils prometheus
)

if [[ $EUID -ne 0 ]]; then
  echo "setup: run as root (network namespaces and package installs need it)" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # One update per machine is enough; the lists are reused by later runs.
  if [[ ! -f /var/lib/apt/periodic/hagw-updated ]]; then
    apt-get update -qq
    mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/hagw-updated
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (>= 1.89) with rustup first" >&2
  exit 1
fi
