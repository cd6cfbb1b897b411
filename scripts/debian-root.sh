#!/usr/bin/env bash
# Prints the path of a clean Debian 12 root file system as a tarball, for the package tests
# (tests/src/debroot.rs): mmdebstrap's `apt` variant (the essential packages and apt) plus
# systemd, installed but never running, as in a chroot, and nftables, hagw's only
# Recommends, so that installing the package needs no download. Made once per machine from
# the Debian mirror (~70 s) and cached outside the clone; concurrent callers wait for one build.
set -euo pipefail

cache=${HAGW_CACHE:-/var/cache/hagw}
include=systemd,nftables
tarball=$cache/debian-12-apt-${include//,/-}.tar
mkdir -p "$cache"
exec 9>"$tarball.lock"
flock 9
if [[ ! -s $tarball ]]; then
	echo "debian-root: building $tarball with mmdebstrap" >&2
	mmdebstrap --quiet --format=tar --variant=apt --include="$include" bookworm \
		"$tarball.part" http://deb.debian.org/debian >&2
	mv "$tarball.part" "$tarball"
fi
echo "$tarball"
