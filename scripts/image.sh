#!/usr/bin/env bash
# Builds and checks the hagw container image (docs/image.md). Run as root on Debian 12.
#
#   scripts/image.sh build-offline        image archive without any container registry:
#                                         release binary + cached mmdebstrap rootfs, packed with
#                                         buildah into target/image/hagw-<tag>.oci.tar
#   scripts/image.sh check-ctr            imports that archive into a throwaway containerd
#                                         (own root, state, socket, private /run) and runs
#                                         hagw --version/--help, nft --version, ovs-ofctl --version
#   scripts/image.sh build-containerfile  builds the user Containerfile (--target prebuilt) with
#                                         buildah on a local Debian base made from the same
#                                         recipe; writes target/image/hagw-<tag>-containerfile.oci.tar
#   scripts/image.sh diff                 compares the two images (files, modes, owners, sizes,
#                                         packages, config) and fails on differences that matter
#   scripts/image.sh all                  the four above, in that order
#   scripts/image.sh build-neutron-standin
#                                         for the pod tests: a Debian image with keepalived and
#                                         iproute2 standing in for a containerized Neutron L3
#                                         agent (same rootfs recipe and packing), written to
#                                         target/image/neutron-standin-<tag>.oci.tar
#   scripts/image.sh clean                removes target/image (the rootfs cache stays)
#
# Idempotent and never prompts (works with CI=true). Everything it creates lives in
# target/image, in $HAGW_IMAGE_CACHE (default /var/cache/hagw/image: cached rootfs tarballs,
# per-run work directories that are removed on exit) and nowhere else.
#
# Environment: HAGW_IMAGE_CACHE, HAGW_IMAGE_REPO (ghcr.io/hagw/hagw), HAGW_IMAGE_TAG (workspace
# version), HAGW_BIN (use this binary instead of running cargo), HAGW_DEBIAN_MIRROR,
# HAGW_DEBIAN_SECURITY_MIRROR, HAGW_IMAGE_REFRESH=1 (rebuild the cached rootfs).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
cd "$ROOT"

CACHE=${HAGW_IMAGE_CACHE:-/var/cache/hagw/image}
OUT=${HAGW_IMAGE_OUT:-$ROOT/target/image}
REPO=${HAGW_IMAGE_REPO:-ghcr.io/hagw/hagw}
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
TAG=${HAGW_IMAGE_TAG:-$VERSION}
REF=$REPO:$TAG
SUITE=bookworm
MIRROR=${HAGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${HAGW_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_REF=localhost/debian:bookworm-slim
# Bump when the rootfs recipe (mmdebstrap options, hook below) changes: it is part of the
# cache key, so old tarballs are not reused.
RECIPE=3
# The one package list, shared with the Containerfile.
PACKAGES=$(sed -n 's/^ARG RUNTIME_PACKAGES="\(.*\)"$/\1/p' Containerfile)
ARCHIVE=$OUT/hagw-$TAG.oci.tar
STANDIN_PACKAGES="keepalived iproute2 procps"
STANDIN_REF=localhost/neutron-standin:$TAG
STANDIN_ARCHIVE=$OUT/neutron-standin-$TAG.oci.tar
CF_ARCHIVE=$OUT/hagw-$TAG-containerfile.oci.tar
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
BIN=${HAGW_BIN:-$ROOT/target/release/hagw}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

say() { printf 'image: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || fail "run as root (mmdebstrap, buildah and containerd need it)"
[[ -n $VERSION ]] || fail "no version in [workspace.package] of Cargo.toml"
[[ -n $PACKAGES ]] || fail "no 'ARG RUNTIME_PACKAGES=\"...\"' line in Containerfile"

# --- tools -------------------------------------------------------------------------------
ensure_tools() {
  local want=() pkg
  for pkg in buildah mmdebstrap containerd runc jq curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || want+=("$pkg")
  done
  ((${#want[@]})) || return 0
  say "apt-get install ${want[*]}"
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
  if ! nice "${apt[@]}" install --no-install-recommends "${want[@]}" >/dev/null; then
    "${apt[@]}" update >/dev/null || fail "apt-get update failed"
    nice "${apt[@]}" install --no-install-recommends "${want[@]}" >/dev/null \
      || fail "apt-get install ${want[*]} failed"
  fi
}

# --- per-run work directory, buildah with private vfs storage ----------------------------
WORK=""
BAH_USED=""
cleanup() {
  local rc=$?
  if [[ -n $WORK && -d $WORK ]]; then
    if [[ -n $BAH_USED ]]; then
      bah rm --all >/dev/null 2>&1 || true
      bah rmi --all --force >/dev/null 2>&1 || true
    fi
    if findmnt -rn -o TARGET | grep -q "^$WORK"; then
      say "mounts remain under $WORK; leaving it in place"
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  exit "$rc"
}
new_work() {
  mkdir -p "$CACHE/work"
  WORK=$(mktemp -d "$CACHE/work/run.XXXXXX")
  mkdir -p "$WORK/tmp"
  export TMPDIR=$WORK/tmp
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
# buildah with its own storage under $WORK (vfs: no overlay mounts to leak). buildah 1.28's
# commit still opens containers/image's blob info cache at /var/lib/containers/cache
# (root's fixed default); each call therefore runs in a private mount namespace whose /var/lib
# is $WORK/varlib, so nothing is written to the host's /var/lib.
bah() {
  BAH_USED=1
  mkdir -p "$WORK/varlib/containers"
  # shellcheck disable=SC2016 # expanded by the inner sh
  nice unshare --mount --propagation private -- sh -c 'mount --bind "$1" /var/lib && shift && exec "$@"' \
    sh "$WORK/varlib" buildah --root "$WORK/storage" --runroot "$WORK/runroot" --storage-driver vfs "$@"
}

# --- the release binary -------------------------------------------------------------------
ensure_binary() {
  if [[ -z ${HAGW_BIN:-} ]]; then
    if command -v cargo >/dev/null; then
      say "cargo build --release --locked -p hagw"
      nice cargo build --release --locked -p hagw >&2
    elif [[ ! -x $BIN ]]; then
      fail "no cargo and no $BIN; install Rust (>= 1.89) or set HAGW_BIN"
    fi
  fi
  [[ -x $BIN ]] || fail "$BIN is missing or not executable"
  # The image's glibc is Debian 12's (2.36): the binary must not need a newer one.
  local need
  need=$(objdump -T "$BIN" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
  if [[ -n $need ]] && [[ $(printf '%s\n' "$need" GLIBC_2.36 | sort -V | tail -1) != GLIBC_2.36 ]]; then
    fail "$BIN needs $need, newer than Debian 12's glibc 2.36; build it on Debian 12"
  fi
}

# --- the Debian rootfs, cached -------------------------------------------------------------
# The cache key: recipe version, architecture, mirrors, package list and the Date fields of
# the three suites' InRelease files (that is, the archive state the rootfs is made
# from). A new point release or security update gives a new key; otherwise runs reuse the
# tarball. Without network the newest tarball of the same recipe and packages is reused.
suite_dates() {
  local url d
  for url in "$MIRROR/dists/$SUITE" "$MIRROR/dists/$SUITE-updates" "$SECURITY_MIRROR/dists/$SUITE-security"; do
    d=$(curl -fsS --max-time 60 "$url/InRelease") || return 1
    d=$(sed -n 's/^Date: //p' <<<"$d" | head -n 1)
    [[ -n $d ]] || return 1
    printf '%s\n' "$d"
  done
}

# The customize hook: what a debian:*-slim image has on top of minbase, in our words
# (see debuerreotype's minimizing config), plus deb822 sources like the official image.
write_hook() {
  cat > "$1" <<EOF
#!/bin/sh
set -e
r="\$1"
# No services start during apt-get install in a build.
printf '#!/bin/sh\nexit 101\n' > "\$r/usr/sbin/policy-rc.d"
chmod 0755 "\$r/usr/sbin/policy-rc.d"
cat > "\$r/etc/apt/apt.conf.d/docker-clean" <<'A'
# Image builds keep no .deb files or apt binary caches (what "apt-get clean" would remove).
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
A
echo 'Acquire::Languages "none";' > "\$r/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' > "\$r/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "\$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
rm -f "\$r/etc/apt/sources.list"
cat > "\$r/etc/apt/sources.list.d/debian.sources" <<'S'
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
S
# With Dir::Cache::pkgcache "" mmdebstrap's final "apt-get clean" no longer knows these.
rm -f "\$r"/var/cache/apt/*.bin
# Runtime-managed files: every container runtime provides its own.
rm -f "\$r/etc/resolv.conf" "\$r/etc/hostname"
EOF
  chmod 0755 "$1"
}

# ensure_rootfs KIND PACKAGES... -> prints the tarball path. KIND "base" is the slim Debian
# base (no packages); "runtime" is base plus the Containerfile's RUNTIME_PACKAGES.
ensure_rootfs() {
  local kind=$1; shift
  local pkgs=("$@") arch dates stable key tarball epoch
  arch=$(dpkg --print-architecture)
  mkdir -p "$CACHE/rootfs"
  stable=$(printf '%s\n' "recipe=$RECIPE" "arch=$arch" "suite=$SUITE" "mirror=$MIRROR" \
    "security=$SECURITY_MIRROR" "packages=$(printf '%s\n' "${pkgs[@]}" | sort -u | xargs)" \
    | sha256sum | cut -c1-12)
  local prefix=$CACHE/rootfs/debian-$SUITE-$kind-r$RECIPE-$stable
  local latest=$prefix.latest
  if dates=$(suite_dates); then
    key=$(printf '%s\n' "$stable" "$dates" | sha256sum | cut -c1-12)
    tarball=$prefix-$key.tar
  elif [[ -L $latest && -f $latest ]]; then
    say "mirror unreachable; reusing $(readlink "$latest")"
    readlink -f "$latest"
    return
  else
    fail "mirror $MIRROR unreachable and no cached $kind rootfs"
  fi
  if [[ -f $tarball && -z ${HAGW_IMAGE_REFRESH:-} ]]; then
    say "rootfs $kind: cached $(basename "$tarball")"
    printf '%s\n' "$tarball"
    return
  fi
  epoch=$(while read -r d; do date -d "$d" +%s; done <<<"$dates" | sort -n | tail -1)
  local hook=$WORK/customize.sh incl=()
  write_hook "$hook"
  ((${#pkgs[@]})) && incl=(--include="$(IFS=,; echo "${pkgs[*]}")")
  say "rootfs $kind: mmdebstrap $SUITE ${pkgs[*]:-} (SOURCE_DATE_EPOCH=$epoch)"
  local t0=$SECONDS
  # minbase = Essential + Priority: required + apt, like debian:*-slim; merged /usr made with
  # symlinks as debootstrap does (not the usrmerge package, which would pull in perl); dpkg path excludes
  # are the slim variant's (they stay in /etc/dpkg/dpkg.cfg.d/99mmdebstrap, so later
  # apt-get installs in the Containerfile drop the same files).
  SOURCE_DATE_EPOCH=$epoch nice mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --skip=output/dev --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/lintian/overrides/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    "${incl[@]}" \
    --customize-hook="$hook" \
    "$SUITE" "$WORK/rootfs.tar" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main" \
    >&2 || fail "mmdebstrap failed"
  mv "$WORK/rootfs.tar" "$tarball"
  printf 'recipe=%s\npackages=%s\nmirror=%s %s\ndates:\n%s\nSOURCE_DATE_EPOCH=%s\nbuilt=%s in %ss\n' \
    "$RECIPE" "${pkgs[*]:-}" "$MIRROR" "$SECURITY_MIRROR" "$dates" "$epoch" "$(date -u +%FT%TZ)" \
    "$((SECONDS - t0))" > "$tarball.info"
  ln -sfn "$(basename "$tarball")" "$latest"
  # Keep the two newest tarballs of this recipe and package list; drop other recipes'.
  # shellcheck disable=SC2012 # our own file names, no odd characters
  ls -1t "$prefix"-*.tar | tail -n +3 | while read -r old; do rm -f "$old" "$old.info"; done
  find "$CACHE/rootfs" -maxdepth 1 -name "debian-*" ! -name "debian-*-r$RECIPE-*" -exec rm -f {} +
  say "rootfs $kind: $(du -h "$tarball" | cut -f1) in $((SECONDS - t0))s"
  printf '%s\n' "$tarball"
}

# from_rootfs TARBALL -> a new working container holding the rootfs. The tarball has no /dev
# (--skip=output/dev: no device nodes in an image); an empty /dev is added as in any image.
from_rootfs() {
  local c
  mkdir -p "$WORK/devtree/dev"
  chmod 0755 "$WORK/devtree" "$WORK/devtree/dev"
  c=$(bah from --quiet scratch)
  bah add --quiet "$c" "$1" / >/dev/null
  bah copy --quiet "$c" "$WORK/devtree" / >/dev/null
  printf '%s\n' "$c"
}

revision() { git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || true; }

# --- build-offline ------------------------------------------------------------------------
cmd_build_offline() {
  local t0=$SECONDS rootfs c rev
  ensure_tools
  ensure_binary
  new_work
  # shellcheck disable=SC2086
  rootfs=$(ensure_rootfs runtime $PACKAGES)
  rev=$(revision)
  mkdir -p "$OUT"
  say "packing $REF"
  # Layer 1: the Debian rootfs (shared by every hagw version built from the same rootfs).
  c=$(from_rootfs "$rootfs")
  bah commit --quiet --rm "$c" localhost/hagw-rootfs:build >/dev/null
  # Layer 2: the binary; the config matches the Containerfile's.
  c=$(bah from --quiet --pull-never localhost/hagw-rootfs:build)
  bah copy --quiet --chown 0:0 --chmod 0755 "$c" "$BIN" /usr/bin/hagw >/dev/null
  bah config --env PATH="$PATH_ENV" --user 0:0 \
    --entrypoint '["/usr/bin/hagw"]' --cmd '["--help"]' \
    --label org.opencontainers.image.title=hagw \
    --label "org.opencontainers.image.description=Keeps the gateway ports of Neutron HA routers silent on standby network nodes" \
    --label org.opencontainers.image.url=https://hagw.dev \
    --label org.opencontainers.image.source=https://github.com/hagw/hagw \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.revision=$rev" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.base.name=debian:$SUITE-slim (mmdebstrap recipe $RECIPE, $(basename "$rootfs"))" \
    "$c"
  rm -f "$ARCHIVE.tmp"
  bah commit --quiet --rm --disable-compression=false "$c" "oci-archive:$ARCHIVE.tmp:$REF" >/dev/null
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  say "wrote $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1)) as $REF in $((SECONDS - t0))s"
}

# --- build-neutron-standin (tests only) ---------------------------------------------------
# One layer: the Debian rootfs with keepalived and iproute2; the tests run their own stand-in
# agent script in it (tests/tests/pod_discovery.rs).
cmd_build_neutron_standin() {
  local t0=$SECONDS rootfs c
  ensure_tools
  new_work
  # shellcheck disable=SC2086
  rootfs=$(ensure_rootfs standin $STANDIN_PACKAGES)
  mkdir -p "$OUT"
  c=$(from_rootfs "$rootfs")
  bah config --env PATH="$PATH_ENV" --user 0:0 --cmd '["bash"]' "$c"
  rm -f "$STANDIN_ARCHIVE.tmp"
  bah commit --quiet --rm --disable-compression=false "$c" "oci-archive:$STANDIN_ARCHIVE.tmp:$STANDIN_REF" >/dev/null
  mv "$STANDIN_ARCHIVE.tmp" "$STANDIN_ARCHIVE"
  say "wrote $STANDIN_ARCHIVE ($(du -h "$STANDIN_ARCHIVE" | cut -f1)) as $STANDIN_REF in $((SECONDS - t0))s"
}

# --- check-ctr: a throwaway containerd in a private mount namespace -------------------------
# containerd 1.6 puts shim sockets, runc state and ctr's FIFOs under /run/containerd whatever
# its own state directory is, so the check runs in a private mount namespace with a tmpfs
# over /run: nothing reaches the host's /run (or an existing containerd).
cmd_check_ctr() {
  [[ -f $ARCHIVE ]] || fail "$ARCHIVE missing; run build-offline first"
  ensure_tools
  new_work
  unshare --mount --propagation private -- "$SELF" _check-ctr-ns "$WORK"
}
CTR_PID=""
CTR_DIR=""
stop_containerd() {
  local rc=$?
  if [[ -n $CTR_PID ]]; then
    kill "$CTR_PID" 2>/dev/null || true
    wait "$CTR_PID" 2>/dev/null || true
  fi
  # Snapshot mounts left by a failed run (they live in this private namespace only).
  findmnt -rn -o TARGET | grep "^$CTR_DIR/" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  exit "$rc"
}
cmd_check_ctr_ns() {
  local work=$1 t0=$SECONDS
  mount -t tmpfs -o mode=0755 hagw-image-run /run
  local d=$work/containerd sock=$work/containerd/containerd.sock
  mkdir -p "$d"
  cat > "$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
# No CRI (no kubelet here); no /opt/containerd.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
EOF
  containerd --config "$d/config.toml" > "$d/containerd.log" 2>&1 &
  CTR_PID=$!
  CTR_DIR=$d
  trap stop_containerd EXIT
  local _
  for _ in $(seq 1 60); do
    ctr --address "$sock" version >/dev/null 2>&1 && break
    sleep 0.5
  done
  ctr --address "$sock" version >/dev/null || { cat "$d/containerd.log" >&2; fail "containerd did not start"; }
  local c=(ctr --address "$sock" -n k8s.io)
  say "ctr -n k8s.io images import $(basename "$ARCHIVE")"
  "${c[@]}" images import "$ARCHIVE" >&2
  "${c[@]}" images ls | awk -v r="$REF" 'NR==1 || $1==r' >&2
  "${c[@]}" images ls -q | grep -qx "$REF" || fail "$REF not in the imported images"
  local n=0
  run() {
    n=$((n + 1))
    say "ctr run $REF $*"
    "${c[@]}" run --rm --cgroup "" "$REF" "hagw-image-check-$$-$n" "$@"
  }
  local out
  out=$(run hagw --version)         # found through PATH, like hagw's own nft/ovs-ofctl lookups
  printf '%s\n' "$out"
  out=$(run /usr/bin/hagw --help)
  printf '%s\n' "$out" | sed -n '1,12p'
  out=$(run nft --version)
  printf '%s\n' "$out"
  out=$(run ovs-ofctl --version)
  printf '%s\n' "$out" | sed -n 1p
  # The image's entrypoint and default command, as the chart runs it (args replace CMD).
  local entry
  entry=$("${c[@]}" run --rm --cgroup "" "$REF" "hagw-image-check-$$-default")
  entry=${entry%%$'\n'*}
  say "default command prints: $entry"
  [[ $entry == *hagw* ]] || fail "entrypoint did not run hagw"
  say "ctr checks passed in $((SECONDS - t0))s"
}

# --- build-containerfile --------------------------------------------------------------------
cmd_build_containerfile() {
  local t0=$SECONDS base c rev
  ensure_tools
  ensure_binary
  new_work
  # The Containerfile copies the binary from the build context (the repository): by default
  # target/release/hagw, else the path given as HAGW_BINARY (it must be under target/).
  local rel
  rel=$(realpath --relative-to="$ROOT" "$BIN")
  [[ $rel == target/* ]] || fail "build-containerfile needs the binary under target/, not $BIN"
  base=$(ensure_rootfs base)
  rev=$(revision)
  mkdir -p "$OUT"
  say "importing $BASE_REF from $(basename "$base")"
  c=$(from_rootfs "$base")
  bah config --env PATH="$PATH_ENV" --cmd '["bash"]' "$c"
  bah commit --quiet --rm "$c" "$BASE_REF" >/dev/null
  say "buildah bud --target prebuilt --build-arg BASE=$BASE_REF (apt-get from $MIRROR)"
  local t1=$SECONDS
  bah bud --isolation chroot --pull-never --target prebuilt \
    --build-arg "BASE=$BASE_REF" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$rev" \
    --build-arg "HAGW_BINARY=$rel" \
    -t "$REF" -f Containerfile "$ROOT" >&2
  say "Containerfile build took $((SECONDS - t1))s"
  rm -f "$CF_ARCHIVE.tmp"
  bah push --quiet --disable-compression=false "$REF" "oci-archive:$CF_ARCHIVE.tmp:$REF" >/dev/null
  mv "$CF_ARCHIVE.tmp" "$CF_ARCHIVE"
  list_archive "$CF_ARCHIVE"
  say "wrote $CF_ARCHIVE ($(du -h "$CF_ARCHIVE" | cut -f1)) in $((SECONDS - t0))s"
}

# --- listings and diff --------------------------------------------------------------------
# list_archive ARCHIVE writes ARCHIVE.files (type, mode, owner, size of regular files, link
# target, path; no timestamps), ARCHIVE.packages (dpkg name, arch, version) and
# ARCHIVE.config (entrypoint, cmd, env, user, workdir, labels), from the image as a runtime
# would see it (all layers applied).
list_archive() {
  local archive=$1 c mnt
  c=$(bah from --quiet --pull-never "oci-archive:$archive")
  mnt=$(bah mount "$c")
  # One line per entry: path, type, mode, owner, size (regular files), link target (symlinks),
  # tab-separated; no timestamps.
  (cd "$mnt" && find . -mindepth 1 -printf '/%P\t%y\t%m\t%U:%G\t%s\t%l\n' \
    | awk -F'\t' -v OFS='\t' '{ if ($2 != "f") $5 = "-"; if ($2 != "l") $6 = "-"; print }' \
    | LC_ALL=C sort) > "$archive.files"
  # The hagw binary is compared by content, not just size.
  printf '/usr/bin/hagw\tsha256\t%s\n' "$(sha256sum < "$mnt/usr/bin/hagw" | cut -d' ' -f1)" >> "$archive.files"
  dpkg-query --admindir="$mnt/var/lib/dpkg" -W -f='${Package}:${Architecture} ${Version} ${db:Status-Abbrev}\n' \
    | LC_ALL=C sort > "$archive.packages"
  du -sb "$mnt" | cut -f1 > "$archive.unpacked-bytes"
  bah umount "$c" >/dev/null
  bah rm "$c" >/dev/null
  local index manifest config
  index=$(tar -xOf "$archive" index.json | jq -r '.manifests[0].digest | sub("sha256:"; "")')
  manifest=$(tar -xOf "$archive" "blobs/sha256/$index")
  config=$(jq -r '.config.digest | sub("sha256:"; "")' <<<"$manifest")
  tar -xOf "$archive" "blobs/sha256/$config" \
    | jq -S '{os, architecture, config: (.config | {Entrypoint, Cmd, Env, User, WorkingDir, Labels})}' \
    > "$archive.config"
  jq -r '[.layers[] | .size] | "layers=\(length) compressed_bytes=\(add)"' <<<"$manifest" > "$archive.layers"
}

# What the diff ignores, and why (everything else must match):
#  /var/log/*                 dpkg/apt logs: mmdebstrap deletes them for reproducibility, an
#                             apt-get in a RUN step writes them. Logs, no behaviour.
#  /var/cache/*               caches: ldconfig's aux-cache (mmdebstrap deletes it), the owner
#                             of apt's archives/partial (_apt after an apt-get run, root after
#                             mmdebstrap).
#  /var/lib/apt/lists/*       package lists: the Containerfile removes the whole directory
#                             content (lock, partial/ too), mmdebstrap keeps the empty skeleton.
#  /var/lib/dpkg/*-old        dpkg's backup of the previous database: its size depends on the
#                             install history (one mmdebstrap pass vs base + apt-get). The
#                             current database (status) is compared, and so is the package list.
#  /etc/hostname, /etc/hosts, /etc/resolv.conf
#                             empty mount points buildah leaves after RUN; every runtime
#                             bind-mounts its own.
#  timestamps                 never listed: they differ by build time and mean nothing here.
#  labels base.name, revision the base is named differently by construction (localhost/ vs
#                             the mmdebstrap recipe); revision is git's HEAD at build time.
# Compared: every other path, its type, mode, owner, the size of every regular file, every
# symlink target, the sha256 of /usr/bin/hagw, the dpkg package list with versions and status,
# and the image config (os, architecture, entrypoint, cmd, env, user, workdir, other labels).
DIFF_IGNORE='^(/var/log/|/var/cache/|/var/lib/apt/lists/|/var/lib/dpkg/[^/]*-old$|/etc/hostname$|/etc/hosts$|/etc/resolv\.conf$)'
filter_files() {
  awk -F'\t' -v re="$DIFF_IGNORE" '$1 !~ re' "$1"
}
cmd_diff() {
  local t0=$SECONDS a b rc=0
  [[ -f $ARCHIVE ]] || fail "$ARCHIVE missing; run build-offline first"
  [[ -f $CF_ARCHIVE ]] || fail "$CF_ARCHIVE missing; run build-containerfile first"
  new_work
  for a in "$ARCHIVE" "$CF_ARCHIVE"; do
    [[ -f $a.files && $a.files -nt $a ]] || list_archive "$a"
  done
  a=$WORK/offline b=$WORK/containerfile
  filter_files "$ARCHIVE.files" > "$a.files"
  filter_files "$CF_ARCHIVE.files" > "$b.files"
  local lbl='del(.config.Labels["org.opencontainers.image.base.name"], .config.Labels["org.opencontainers.image.revision"])'
  jq -S "$lbl" "$ARCHIVE.config" > "$a.config"
  jq -S "$lbl" "$CF_ARCHIVE.config" > "$b.config"
  local what
  for what in files packages config; do
    local x=$a.$what y=$b.$what
    [[ $what == packages ]] && x=$ARCHIVE.packages y=$CF_ARCHIVE.packages
    if diff -u --label "offline.$what" --label "containerfile.$what" "$x" "$y" > "$WORK/$what.diff"; then
      say "diff $what: identical ($(wc -l < "$x") entries)"
    else
      rc=1
      say "diff $what: DIFFERENT"
      head -n 60 "$WORK/$what.diff" >&2
    fi
  done
  local ignored
  ignored=$(( $(wc -l < "$ARCHIVE.files") - $(wc -l < "$a.files") ))
  say "ignored $ignored offline and $(( $(wc -l < "$CF_ARCHIVE.files") - $(wc -l < "$b.files") )) containerfile entries under ${DIFF_IGNORE}"
  for a in "$ARCHIVE" "$CF_ARCHIVE"; do
    say "$(basename "$a"): $(du -b "$a" | cut -f1) bytes archive, $(cat "$a.layers"), unpacked $(cat "$a.unpacked-bytes") bytes"
  done
  ((rc == 0)) || fail "the images differ (see above)"
  say "images match in $((SECONDS - t0))s"
}

cmd_clean() { rm -rf "$OUT"; say "removed $OUT"; }

case ${1:-} in
  build-offline) cmd_build_offline ;;
  build-neutron-standin) cmd_build_neutron_standin ;;
  check-ctr) cmd_check_ctr ;;
  _check-ctr-ns) cmd_check_ctr_ns "$2" ;;
  build-containerfile) cmd_build_containerfile ;;
  diff) cmd_diff ;;
  all)
    "$SELF" build-offline
    # One binary for both images: later steps do not run cargo again (a concurrent edit of
    # the sources would otherwise give the two images different binaries).
    export HAGW_BIN=$BIN
    "$SELF" check-ctr
    "$SELF" build-containerfile
    "$SELF" diff
    ;;
  clean) cmd_clean ;;
  *) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
