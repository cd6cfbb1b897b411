#!/usr/bin/env bash
# k8s-node.sh - a real single-node Kubernetes on this machine for hagw's tests: a control plane on
# 127.0.0.1 plus a kubelet with a container runtime, so DaemonSet pods really run (what an API
# server alone cannot show: read-only /proc/sys, masked paths, namespaces, image contents, probes,
# restarts), or that control plane alone (HAGW_K8S_NODE_KUBELET=0, the operator tests).
# No binary downloads, no registry pulls:
#
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#                  built from the Go module k8s.io/kubernetes (HAGW_K8S_NODE_VERSION, default v1.34.12)
#   helm           built from the Go module helm.sh/helm/v3 (cmd/helm)
#   crictl         built from the Go module sigs.k8s.io/cri-tools (used by `stop` to tear pods down)
#   etcd           Debian 12 package `etcd-server` (3.4.x)
#   containerd     Debian 12 package `containerd` (1.6.x, CRI v1) + `runc`, with its own root,
#                  state dir and socket (another engine on the host is neither used nor touched)
#   CNI            Debian 12 package `containernetworking-plugins` (bridge + host-local + loopback)
#   pause image    a tiny static Go program packed into an OCI archive by this script
#                  (localhost/hagw/pause:3.10), plus localhost/hagw/probe:1 (same binary) for tests
#
# Usage:
#   scripts/k8s-node.sh install   # apt packages + Go builds + images (idempotent, cached)
#   scripts/k8s-node.sh start     # install if needed, start everything, wait for the node to be
#                                 # Ready, print `export ...` lines on stdout:
#                                 #   eval "$(scripts/k8s-node.sh start)"
#   scripts/k8s-node.sh stop      # stop exactly what `start` launched (pid files), remove its pods,
#                                 # containers, mounts, netns, CNI bridge, cgroups, state dir
#   scripts/k8s-node.sh status    # exit 0 when every component runs and the node is Ready
#                                 # (control plane only: when its four run and /readyz is ok)
#   scripts/k8s-node.sh env       # print the `export ...` lines again
#   scripts/k8s-node.sh selftest  # on a started node: hostNetwork DaemonSet + probe pods, checks
#                                 # that /proc/sys is read-only in non-privileged containers,
#                                 # kubectl exec/logs, helm install/uninstall; cleans up after itself
#   scripts/k8s-node.sh start-control-plane   # = HAGW_K8S_NODE_KUBELET=0 start (below)
#   scripts/k8s-node.sh power-off # the node's kubelet, containerd and containers SIGKILLed (a power
#                                 # loss; the control plane stays), then what a boot clears removed
#   scripts/k8s-node.sh power-on  # containerd and the kubelet started again: the pods restart as
#                                 # after a reboot (tests/tests/pod_reboot.rs)
#
# Control plane only (HAGW_K8S_NODE_KUBELET=0): `start` runs etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler on 127.0.0.1 with their state in the state dir, and
# nothing else: no containerd, kubelet, CNI, node IP, cgroup, sysctl or other host-wide change, and
# none of the kubelet ports. Several such control planes (on different ports and state dirs) can
# run at once, also next to a full node. `start` waits for /readyz and the `default`
# ServiceAccount; `stop` stops exactly the four processes of that state dir and touches nothing
# else on the host (the state dir records the mode, so `stop` needs no HAGW_K8S_NODE_KUBELET).
# The operator tests (tests/src/k8s.rs) use this mode, one control plane per test binary.
#
# Environment (all optional):
#   HAGW_K8S_NODE_CACHE      build cache, kept between runs (default /var/cache/hagw/k8s-node);
#                            GOPATH, GOMODCACHE and GOCACHE live under it too
#   HAGW_K8S_NODE_STATE      runtime dir (certs, etcd data, containerd root/state, kubelet root,
#                            logs, pid files, kubeconfig); default: a fresh /tmp/hagw-k8s-node.XXXXXX
#                            per `start`; stop/status/env find it via $CACHE/current-state
#                            (control plane only: /tmp/hagw-k8s-cp.XXXXXX and
#                            $CACHE/current-control-plane-state, which a `start` with an explicit
#                            HAGW_K8S_NODE_STATE leaves alone)
#   HAGW_K8S_NODE_VERSION    Kubernetes version to build (default v1.34.12); the staging modules
#                            are pinned to the matching v0.<minor>.<patch>
#   HAGW_K8S_NODE_HELM_VERSION   helm.sh/helm/v3 version (default v3.22.0)
#   HAGW_K8S_NODE_CRICTL_VERSION sigs.k8s.io/cri-tools version (default v1.34.0)
#   HAGW_K8S_NODE_GO         go binary (default /usr/local/go/bin/go, else `go` on PATH; >= 1.24,
#                            helm v3.22 needs >= 1.26)
#   HAGW_K8S_NODE_NAME       node name (default hagw-node)
#   HAGW_K8S_NODE_API_PORT   kube-apiserver HTTPS port on 127.0.0.1     (default 36443)
#   HAGW_K8S_NODE_ETCD_PORT  etcd client port on 127.0.0.1              (default 33790)
#   HAGW_K8S_NODE_ETCD_PEER_PORT  etcd peer port on 127.0.0.1           (default 33800)
#   HAGW_K8S_NODE_IP         the node's InternalIP, added as a /32 to `lo` while the node runs
#                            (the kubelet refuses a loopback node IP) (default 10.234.1.1)
#   HAGW_K8S_NODE_KUBELET_PORT    kubelet HTTPS port on HAGW_K8S_NODE_IP (default 30250)
#   HAGW_K8S_NODE_KUBELET_HEALTHZ_PORT  kubelet healthz on 127.0.0.1    (default 30248)
#   HAGW_K8S_NODE_POD_CIDR   pod subnet on the node's CNI bridge        (default 10.234.0.0/24)
#   HAGW_K8S_NODE_BRIDGE     CNI bridge name                            (default hagwnode0)
#   HAGW_K8S_NODE_CGROUP     cgroup parent of all pods (cgroupfs)       (default /hagw-node)
#   HAGW_K8S_NODE_TIMEOUT    seconds to wait for each component         (default 180)
#   HAGW_K8S_NODE_PRUNE      1 = after a build, delete GOCACHE and GOPATH (~5.5 GB; a later rebuild
#                            then starts cold again) (default 0)
#   HAGW_K8S_NODE_KEEP_LOGS  1 = `stop` keeps the *.log files of the state dir (default 0; a
#                            failed `start` always keeps them and says where)
#   HAGW_K8S_NODE_KUBELET    0 = control plane only (see above) (default 1 = the whole node)
#   HAGW_K8S_NODE_KEEP_DATA  control plane only: 1 = `stop` keeps the state dir (certs, token,
#                            kubeconfig, etcd data, logs) and `start` in that same
#                            HAGW_K8S_NODE_STATE reuses it: a restart with the data kept, same
#                            kubeconfig (default 0: `start` wipes etcd data, `stop` deletes the dir)
#
# While the node runs the host gets: NODE_IP/32 on lo, the CNI bridge, cgroup HAGW_K8S_NODE_CGROUP,
# three kubelet sysctls, /run/containerd/s, /var/lib/kubelet/device-plugins, /var/lib/cni,
# /var/log/containers; `stop` undoes all of it (docs/k8s-node.md has the why of each).
#
# Everything but the final `export` lines goes to stderr. Never prompts; works with CI=true and no
# stdin. Must run as root (containerd, kubelet, mounts, cgroups).
set -euo pipefail

CACHE=${HAGW_K8S_NODE_CACHE:-/var/cache/hagw/k8s-node}
K8S_VERSION=${HAGW_K8S_NODE_VERSION:-v1.34.12}
HELM_VERSION=${HAGW_K8S_NODE_HELM_VERSION:-v3.22.0}
CRICTL_VERSION=${HAGW_K8S_NODE_CRICTL_VERSION:-v1.34.0}
NODE_NAME=${HAGW_K8S_NODE_NAME:-hagw-node}
API_PORT=${HAGW_K8S_NODE_API_PORT:-36443}
ETCD_PORT=${HAGW_K8S_NODE_ETCD_PORT:-33790}
ETCD_PEER_PORT=${HAGW_K8S_NODE_ETCD_PEER_PORT:-33800}
KUBELET_PORT=${HAGW_K8S_NODE_KUBELET_PORT:-30250}
KUBELET_HEALTHZ_PORT=${HAGW_K8S_NODE_KUBELET_HEALTHZ_PORT:-30248}
POD_CIDR=${HAGW_K8S_NODE_POD_CIDR:-10.234.0.0/24}
NODE_IP=${HAGW_K8S_NODE_IP:-10.234.1.1}
BRIDGE=${HAGW_K8S_NODE_BRIDGE:-hagwnode0}
CGROUP_ROOT=${HAGW_K8S_NODE_CGROUP:-/hagw-node}
TIMEOUT=${HAGW_K8S_NODE_TIMEOUT:-180}
KEEP_LOGS=${HAGW_K8S_NODE_KEEP_LOGS:-0}
KUBELET=${HAGW_K8S_NODE_KUBELET:-1}
KEEP_DATA=${HAGW_K8S_NODE_KEEP_DATA:-0}
PRUNE=${HAGW_K8S_NODE_PRUNE:-0}
PAUSE_IMAGE=localhost/hagw/pause:3.10
PROBE_IMAGE=localhost/hagw/probe:1
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
# Change this whenever the build recipe below changes: cached binaries with another value are rebuilt.
RECIPE=2
# Host sysctls the kubelet sets on start (protectKernelDefaults=false): saved by `start`, restored by `stop`.
KUBELET_SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
                 kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

say() { printf '[k8s-node.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

for v in API_PORT ETCD_PORT ETCD_PEER_PORT KUBELET_PORT KUBELET_HEALTHZ_PORT TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || fail "$v must be a number, got '${!v}'"
done
[[ $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || fail "HAGW_K8S_NODE_VERSION must look like v1.34.12, not '$K8S_VERSION'"
K8S_MINOR=${BASH_REMATCH[1]}
STAGING_VERSION=v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}
[[ $NODE_IP =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && $NODE_IP != 127.* ]] || fail "HAGW_K8S_NODE_IP must be a non-loopback IPv4 address"
[[ $NODE_NAME =~ ^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$ ]] || fail "HAGW_K8S_NODE_NAME must be a lowercase DNS name, not '$NODE_NAME'"
[[ ${#BRIDGE} -le 15 ]] || fail "HAGW_K8S_NODE_BRIDGE must be at most 15 characters"
[[ $CGROUP_ROOT == /?* && $CGROUP_ROOT != *..* ]] || fail "HAGW_K8S_NODE_CGROUP must be an absolute cgroup path"
[[ $KUBELET == [01] ]] || fail "HAGW_K8S_NODE_KUBELET must be 0 or 1, not '$KUBELET'"
[[ $KEEP_DATA == [01] ]] || fail "HAGW_K8S_NODE_KEEP_DATA must be 0 or 1, not '$KEEP_DATA'"
[[ ${1:-} == start-control-plane ]] && KUBELET=0

BIN=$CACHE/bin
CTR_BIN=/usr/bin/containerd
ETCD_BIN=/usr/bin/etcd

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

apt_install_missing() {
  local want=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
  done
  ((${#want[@]})) || return 0
  say "apt-get install ${want[*]}"
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # Debian's containerd ships only a systemd unit: without systemd as PID 1 nothing gets started.
  if ! "${apt[@]}" install --no-install-recommends "${want[@]}" >/dev/null; then
    say "install failed; running apt-get update and retrying"
    "${apt[@]}" update >/dev/null || fail "apt-get update failed"
    "${apt[@]}" install --no-install-recommends "${want[@]}" >/dev/null || fail "apt-get install ${want[*]} failed"
  fi
}

go_bin() {
  if [[ -n ${HAGW_K8S_NODE_GO:-} ]]; then echo "$HAGW_K8S_NODE_GO"
  elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
  else command -v go || fail "no Go toolchain (set HAGW_K8S_NODE_GO)"
  fi
}

go_env() { # the environment every go command of this script runs in
  export GOPATH=$CACHE/gopath GOMODCACHE=$CACHE/gopath/pkg/mod GOCACHE=$CACHE/gocache \
         GOTOOLCHAIN=local GOENV=off GOFLAGS='' CGO_ENABLED=0 GOTELEMETRY=off
  export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}
  GO=$(go_bin)
  [[ -x $GO ]] || fail "go binary '$GO' not found"
}

build_id() {
  go_env
  echo "k8s=$K8S_VERSION staging=$STAGING_VERSION helm=$HELM_VERSION crictl=$CRICTL_VERSION go=$("$GO" env GOVERSION) recipe=$RECIPE"
}

binaries_current() {
  local f
  for f in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl helm crictl hagw-pause BUILD_ID; do
    [[ -e $BIN/$f ]] || return 1
  done
  [[ -f $CACHE/images/pause.tar && -f $CACHE/images/probe.tar ]] || return 1
  [[ "$(cat "$BIN/BUILD_ID")" == "$(build_id)" ]]
}

build_kubernetes() { # $1 = output dir
  local out=$1 wrap=$CACHE/build/k8s-$K8S_VERSION modfile
  say "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl $K8S_VERSION"
  say "(cold: ~10 minutes on 2 busy cores, ~15 with helm/crictl; later runs use the cached binaries)"
  # k8s.io/kubernetes replaces its staging modules (k8s.io/api, ...) with ./staging paths, so
  # `go install k8s.io/kubernetes/cmd/...@v` is refused. A wrapper module requires it and points
  # every staging module at its published v0.<minor>.<patch>.
  modfile=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
  [[ -f $modfile ]] || fail "could not download k8s.io/kubernetes@$K8S_VERSION from $GOPROXY"
  rm -rf "$wrap"; mkdir -p "$wrap"
  {
    printf 'module hagw.local/k8s-node-build\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    sed -n "s|^\s*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/src/.*|\t\1 => \1 $STAGING_VERSION|p" "$modfile"
    printf ')\n'
  } > "$wrap/go.mod"
  grep -q "k8s.io/api => k8s.io/api $STAGING_VERSION" "$wrap/go.mod" || fail "found no staging replaces in $modfile"
  "$GO" mod download -json "k8s.io/api@$STAGING_VERSION" >/dev/null \
    || fail "staging modules $STAGING_VERSION are not served by $GOPROXY"
  # The module zip carries no commit id: gitCommit stays empty, gitVersion is what matters
  # (kubelet --version, the node's status.nodeInfo.kubeletVersion, /version).
  local ld="-s -w" p
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$wrap" && GOFLAGS=-mod=mod nice -n 10 "$GO" build -trimpath -ldflags "$ld" -o "$out/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl) \
    || fail "go build of Kubernetes $K8S_VERSION failed"
}

build_tools() { # $1 = output dir: helm and crictl (plain `go install`: neither has replace directives)
  local out=$1
  say "building helm $HELM_VERSION and crictl $CRICTL_VERSION"
  (cd / && GOBIN=$out nice -n 10 "$GO" install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") || fail "building helm $HELM_VERSION failed"
  (cd / && GOBIN=$out nice -n 10 "$GO" install -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
      "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION") || fail "building crictl $CRICTL_VERSION failed"
}

# The pause program (sandbox image) and the probe used by `selftest`: one static binary.
#   hagw-pause                 sleep; reap children; exit 0 on SIGTERM/SIGINT (the pod's pause)
#   hagw-pause probe           print the /proc and /sys mounts of /proc/self/mountinfo, then pause
#   hagw-pause mountinfo       print those mounts and exit
#   hagw-pause write FILE VAL  write VAL to FILE; exit 1 with the error if that fails
#   hagw-pause dial HOST:PORT  open a TCP connection (3 s timeout); exit 1 with the error if that fails
build_pause() { # $1 = output dir
  local out=$1 src=$CACHE/build/pause
  rm -rf "$src"; mkdir -p "$src"
  cat > "$src/go.mod" <<'EOF'
module hagw.local/pause

go 1.21
EOF
  cat > "$src/main.go" <<'EOF'
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func mounts() {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		fmt.Println("mountinfo:", err)
		return
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 5 && (strings.HasPrefix(fields[4], "/proc") || strings.HasPrefix(fields[4], "/sys")) {
			// mount point, per-mount options, then the rest (fs type, source, super options)
			fmt.Println(fields[4], fields[5], strings.Join(fields[6:], " "))
		}
	}
}

func pause() {
	c := make(chan os.Signal, 8)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range c {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}

func main() {
	mode := ""
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	switch mode {
	case "mountinfo":
		mounts()
	case "probe":
		mounts()
		pause()
	case "write":
		if len(os.Args) != 4 {
			fmt.Fprintln(os.Stderr, "usage: hagw-pause write FILE VALUE")
			os.Exit(2)
		}
		err := os.WriteFile(os.Args[2], []byte(os.Args[3]), 0)
		if err != nil {
			fmt.Println("write", os.Args[2], "failed:", err)
			os.Exit(1)
		}
		fmt.Println("write", os.Args[2], "ok")
	case "dial":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: hagw-pause dial HOST:PORT")
			os.Exit(2)
		}
		c, err := net.DialTimeout("tcp", os.Args[2], 3*time.Second)
		if err != nil {
			fmt.Println("dial", os.Args[2], "failed:", err)
			os.Exit(1)
		}
		c.Close()
		fmt.Println("dial", os.Args[2], "ok")
	default:
		pause()
	}
}
EOF
  (cd "$src" && GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags "-s -w" -o "$out/hagw-pause" .) \
    || fail "building the pause program failed"
}

# OCI image archive (oci-layout + index.json + blobs) holding one uncompressed layer.
# $1 = archive, $2 = image name, $3 = layer rootfs dir, $4 = config.Entrypoint JSON, $5 = config.Cmd JSON
make_image() {
  local archive=$1 name=$2 rootfs=$3 entry=$4 cmd=$5 d arch
  d=$(mktemp -d); mkdir -p "$d/blobs/sha256"
  arch=$("$GO" env GOARCH)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$d/layer.tar" -C "$rootfs" .
  local layer lsize cfg csize man msize
  layer=$(sha256sum "$d/layer.tar" | cut -d' ' -f1); lsize=$(stat -c %s "$d/layer.tar")
  mv "$d/layer.tar" "$d/blobs/sha256/$layer"
  printf '{"architecture":"%s","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/","Env":["PATH=/"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"hagw scripts/k8s-node.sh"}]}' \
    "$arch" "$entry" "$cmd" "$layer" > "$d/config.json"
  cfg=$(sha256sum "$d/config.json" | cut -d' ' -f1); csize=$(stat -c %s "$d/config.json")
  mv "$d/config.json" "$d/blobs/sha256/$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg" "$csize" "$layer" "$lsize" > "$d/manifest.json"
  man=$(sha256sum "$d/manifest.json" | cut -d' ' -f1); msize=$(stat -c %s "$d/manifest.json")
  mv "$d/manifest.json" "$d/blobs/sha256/$man"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$msize" "$arch" "$name" "${name##*:}" > "$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$archive" -C "$d" oci-layout index.json blobs
  rm -rf "$d"
}

build_images() { # $1 = dir holding hagw-pause
  local root
  root=$(mktemp -d)
  install -m 0755 "$1/hagw-pause" "$root/pause"
  ln "$root/pause" "$root/hagw-probe"
  mkdir -p "$CACHE/images"
  make_image "$CACHE/images/pause.tar" "$PAUSE_IMAGE" "$root" '["/pause"]' 'null'
  make_image "$CACHE/images/probe.tar" "$PROBE_IMAGE" "$root" '["/hagw-probe"]' '["probe"]'
  rm -rf "$root"
}

cmd_install() {
  local t0=$SECONDS
  ((EUID == 0)) || fail "must run as root"
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 7200 9 || fail "timed out waiting for the lock on $CACHE/.lock"
  apt_install_missing etcd-server containerd runc containernetworking-plugins openssl curl ca-certificates \
    iproute2 iptables util-linux tar
  go_env
  if binaries_current; then
    say "cached binaries are current ($(cat "$BIN/BUILD_ID"))"
  else
    local new=$CACHE/bin.new
    rm -rf "$new"; mkdir -p "$new"
    build_pause "$new"
    build_tools "$new"
    build_kubernetes "$new"
    build_images "$new"
    build_id > "$new/BUILD_ID"
    rm -rf "$BIN" && mv "$new" "$BIN"
    say "build finished in $((SECONDS - t0))s: $(du -sh "$BIN" | cut -f1) in $BIN"
    "$BIN/kubelet" --version >&2
    if [[ $PRUNE == 1 ]]; then
      chmod -R u+w "$CACHE/gopath" 2>/dev/null || true # the module cache is read-only
      rm -rf "$CACHE/gocache" "$CACHE/gopath" "$CACHE/build"
      say "pruned GOCACHE and GOPATH"
    fi
  fi
  flock -u 9
  say "install done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# start / stop / status
# ---------------------------------------------------------------------------------------------

# The state dir: explicit, else the one the last `start` (of this mode) recorded in the cache.
# A control-plane-only state dir holds the file `control-plane-only`: stop/status/env follow it,
# whatever HAGW_K8S_NODE_KUBELET says.
resolve_state() {
  if ((KUBELET)); then POINTER=$CACHE/current-state; else POINTER=$CACHE/current-control-plane-state; fi
  if [[ -n ${HAGW_K8S_NODE_STATE:-} ]]; then STATE=$HAGW_K8S_NODE_STATE
  elif [[ -f $POINTER ]]; then STATE=$(cat "$POINTER")
  else STATE=
  fi
  if [[ -n $STATE && -d $STATE ]]; then
    if [[ -f $STATE/control-plane-only ]]; then KUBELET=0
    elif [[ -f $STATE/apiserver.pid || -f $STATE/kubeconfig ]]; then KUBELET=1
    fi
  fi
  if ((KUBELET)); then POINTER=$CACHE/current-state; else POINTER=$CACHE/current-control-plane-state; fi
  SOCK=$STATE/run/containerd.sock
  # status/selftest talk to the API server of that state dir, whatever HAGW_K8S_NODE_API_PORT says.
  local server
  if [[ -n $STATE && -f $STATE/kubeconfig ]]; then
    server=$(sed -n 's|^ *server: https://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$STATE/kubeconfig")
    [[ -n $server ]] && API_PORT=$server
  fi
  return 0
}

# The components of this mode, in start order.
components() {
  if ((KUBELET)); then echo etcd apiserver kcm scheduler containerd kubelet; else echo etcd apiserver kcm scheduler; fi
}

exe_of() {
  case $1 in
    etcd) echo "$ETCD_BIN" ;;
    apiserver) echo "$BIN/kube-apiserver" ;;
    kcm) echo "$BIN/kube-controller-manager" ;;
    scheduler) echo "$BIN/kube-scheduler" ;;
    containerd) echo "$CTR_BIN" ;;
    kubelet) echo "$BIN/kubelet" ;;
  esac
}

ours() { # $1 = component; true if its pid file names a live process running the expected binary
  local f=$STATE/$1.pid pid exe
  [[ -n $STATE && -f $f ]] || return 1
  pid=$(cat "$f"); [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe=$(readlink -f "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ $exe == "$(readlink -f "$(exe_of "$1")")" ]]
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

print_env() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export HAGW_K8S_NODE_STATE=$STATE"
  if ((KUBELET)); then
    echo "export HAGW_K8S_NODE_NAME=$NODE_NAME"
    echo "export HAGW_K8S_NODE_BIN=$BIN"
    echo "export CONTAINER_RUNTIME_ENDPOINT=unix://$SOCK"
  else # no node, no container runtime
    echo "export HAGW_K8S_NODE_BIN=$BIN"
    echo "export HAGW_K8S_NODE_KUBELET=0"
  fi
}

kc() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

make_pki() {
  local d=$STATE/pki
  [[ -f $d/token && -f $d/kubelet.crt && -f $d/sa.key ]] && return 0
  mkdir -p "$d" && chmod 700 "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=hagw-k8s-node-ca -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    # name, subject, extendedKeyUsage, subjectAltName (or -)
    issue() {
      openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr"
      {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$3"
        [[ $4 == - ]] || echo "subjectAltName=$4"
      } > "$1.ext"
      openssl x509 -req -days 3650 -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -extfile "$1.ext" -out "$1.crt"
      rm -f "$1.csr" "$1.ext"
    }
    issue apiserver /CN=kube-apiserver serverAuth \
      "IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth -
    issue kubelet "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost"
    issue kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth -
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    openssl rand -hex 32 > token
    echo "$(cat token),hagw-admin,hagw-admin,system:masters" > tokens.csv
    chmod 600 ./*.key token tokens.csv
  ) >"$STATE/pki.log" 2>&1 || { cat "$STATE/pki.log" >&2; fail "creating certificates with openssl failed"; }
}

write_kubeconfigs() {
  local ca; ca=$(base64 -w0 "$STATE/pki/ca.crt")
  cat > "$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hagw-node
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: hagw-admin
  user:
    token: $(cat "$STATE/pki/token")
contexts:
- name: hagw-node
  context:
    cluster: hagw-node
    user: hagw-admin
    namespace: default
current-context: hagw-node
EOF
  cat > "$STATE/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hagw-node
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $ca
users:
- name: kubelet
  user:
    client-certificate: $STATE/pki/kubelet-client.crt
    client-key: $STATE/pki/kubelet-client.key
contexts:
- name: kubelet
  context:
    cluster: hagw-node
    user: kubelet
current-context: kubelet
EOF
  chmod 600 "$STATE/kubeconfig" "$STATE/kubelet.kubeconfig"
}

write_containerd_config() {
  mkdir -p "$STATE/containerd" "$STATE/run" "$STATE/cni/net.d" "$STATE/cni/ipam"
  cat > "$STATE/containerd/config.toml" <<EOF
# containerd 1.6 (Debian 12) for the hagw test node: own root, state, sockets; nothing under
# /var/lib/containerd, /run/containerd (except the shims' sockets, see docs/k8s-node.md), /opt, /etc/cni.
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # true when this process lacks CAP_SYS_RESOURCE (some VMs/sandboxes): runc would otherwise fail
  # every sandbox with "can't get final child's PID from pipe: EOF" (nsexec cannot set the
  # kubelet's oom_score_adj -998). true clamps it to containerd's own value.
  restrict_oom_score_adj = $(has_cap_sys_resource && echo false || echo true)
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$STATE/run/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF
  # bridge without isGateway/ipMasq: the plugin then neither enables net.ipv4.ip_forward nor adds
  # iptables rules on the host. Pods on the bridge reach each other; hostNetwork pods need nothing.
  cat > "$STATE/cni/net.d/10-hagw-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "hagw-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "dataDir": "$STATE/cni/ipam"
      }
    }
  ]
}
EOF
}

has_cap_sys_resource() { # CAP_SYS_RESOURCE = bit 24 of the effective set
  local eff; eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  (( (16#$eff >> 24) & 1 ))
}

cgroup_v1() { [[ $(stat -fc %T /sys/fs/cgroup) != cgroup2fs ]]; }

# The node IP on `lo` (the kubelet serves there: the API server dials the node's InternalIP, and the
# kubelet rejects 127.0.0.0/8 as node IP), and the pods' parent cgroup, which the kubelet requires
# to exist in every hierarchy before it starts (cgroupRoot).
setup_node_host() {
  ip addr add "$NODE_IP/32" dev lo label lo:hagwnode || fail "could not add $NODE_IP/32 to lo"
  echo "$NODE_IP/32" > "$STATE/host/lo-addr"
  local h
  if cgroup_v1; then
    for h in /sys/fs/cgroup/*/; do
      h=${h%/}
      mountpoint -q "$h" || continue
      mkdir -p "$h$CGROUP_ROOT"
      if [[ -f $h/cpuset.cpus ]]; then # a new v1 cpuset cgroup starts with no cpus/mems
        cat "$h/cpuset.cpus" > "$h$CGROUP_ROOT/cpuset.cpus"
        cat "$h/cpuset.mems" > "$h$CGROUP_ROOT/cpuset.mems"
      fi
    done
  else
    mkdir -p "/sys/fs/cgroup$CGROUP_ROOT"
  fi
}

write_kubelet_config() {
  mkdir -p "$STATE/kubelet" "$STATE/pod-logs"
  local extra=
  cgroup_v1 && extra="failCgroupV1: false  # cgroup v1 host (maintenance mode since 1.31; refused from 1.35 unless false)"
  cat > "$STATE/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $STATE/pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
cgroupsPerQOS: true
failSwapOn: false
$extra
podLogsDir: $STATE/pod-logs
volumePluginDir: $STATE/kubelet/volume-plugins
makeIPTablesUtilChains: false
protectKernelDefaults: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
registerNode: true
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
maxPods: 50
EOF
}

launch() { # $1 = component, $2.. = command line; detached, no stdin, log in the state dir
  setsid "${@:2}" >"$STATE/$1.log" 2>&1 </dev/null &
  local pid=$! want _
  echo "$pid" > "$STATE/$1.pid"
  # setsid execs the command in place: until it has, /proc/$pid/exe is setsid and `ours` would
  # take the component for dead.
  want=$(readlink -f "$2")
  for _ in $(seq 100); do
    [[ $(readlink -f "/proc/$pid/exe" 2>/dev/null) == "$want" ]] && return 0
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
}

wait_for() { # $1 = component, $2 = description, $3.. = check command
  local comp=$1 what=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! ours "$comp"; then
      tail -n 30 "$STATE/$comp.log" >&2 || true
      fail "$comp exited before $what (log: $STATE/$comp.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$STATE/$comp.log" >&2 || true
      fail "$comp: no $what after ${TIMEOUT}s (log: $STATE/$comp.log)"
    fi
    sleep 0.3
  done
}

api_get() {
  curl -sSf --max-time 5 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(cat "$STATE/pki/token")" \
    "https://127.0.0.1:$API_PORT$1"
}

node_ready() {
  [[ $(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# Host state recorded before anything starts, so `stop` restores/removes exactly what this run changed.
record_host() {
  local h=$STATE/host s
  mkdir -p "$h"
  netns_id > "$h/netns"
  : > "$h/sysctls"
  for s in "${KUBELET_SYSCTLS[@]}"; do
    [[ -r /proc/sys/$s ]] && echo "$s $(cat "/proc/sys/$s")" >> "$h/sysctls"
  done
  : > "$h/absent"
  for s in /run/containerd /run/containerd/s /var/log/containers /var/lib/kubelet /var/lib/cni; do
    [[ -e $s ]] || echo "$s" >> "$h/absent"
  done
  { iptables-save 2>/dev/null || true; } | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p' | sort -u > "$h/iptables-kube-chains"
  { ip6tables-save 2>/dev/null || true; } | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p' | sort -u > "$h/ip6tables-kube-chains"
}

netns_id() { readlink /proc/self/ns/net; }

# Every whole node registers its host-wide names (the address on lo and the bridge, in its
# network namespace; its cgroup root, host-wide) under $REGISTRY with its state dir. A node
# whose processes all died without `stop` (its test process SIGKILLed, the machine's session
# cut) leaves those names behind; a later `start` that finds them taken looks here, and if the
# node that took them has no process left, stops it (keeping its logs) and goes on. A node with
# a live component, or names nobody registered, still make `start` fail.
REGISTRY=$CACHE/nodes

register_node() {
  mkdir -p "$REGISTRY"
  printf 'R_STATE=%q\nR_NETNS=%q\nR_NODE_IP=%q\nR_BRIDGE=%q\nR_CGROUP=%q\n' \
    "$STATE" "$(netns_id)" "$NODE_IP" "$BRIDGE" "$CGROUP_ROOT" > "$REGISTRY/$(registry_key "$STATE")"
}

registry_key() { printf %s "$1" | sha256sum | cut -c1-16; }

node_alive() { # $1 = state dir of a whole node: true if any of its components still runs
  local STATE=$1 comp KUBELET=1
  for comp in $(components); do ours "$comp" && return 0; done
  return 1
}

reclaim_dead_nodes() {
  local entry R_STATE R_NETNS R_NODE_IP R_BRIDGE R_CGROUP here
  here=$(netns_id)
  for entry in "$REGISTRY"/*; do
    [[ -f $entry ]] || continue
    # shellcheck disable=SC1090 # written by register_node with printf %q
    source "$entry"
    if [[ ! -d $R_STATE ]]; then rm -f "$entry"; continue; fi
    [[ $R_CGROUP == "$CGROUP_ROOT" ]] \
      || { [[ $R_NETNS == "$here" ]] && [[ $R_NODE_IP == "$NODE_IP" || $R_BRIDGE == "$BRIDGE" ]]; } \
      || continue
    node_alive "$R_STATE" && continue
    say "reclaiming the names of a dead node (no process left) in $R_STATE"
    HAGW_K8S_NODE_STATE=$R_STATE HAGW_K8S_NODE_IP=$R_NODE_IP HAGW_K8S_NODE_BRIDGE=$R_BRIDGE \
      HAGW_K8S_NODE_CGROUP=$R_CGROUP HAGW_K8S_NODE_KEEP_LOGS=1 HAGW_K8S_NODE_KUBELET=1 "$0" stop \
      || fail "could not stop the dead node in $R_STATE"
    rm -f "$entry"
  done
}

check_host() {
  ((EUID == 0)) || fail "must run as root"
  [[ -d /usr/lib/cni && -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
    || fail "CNI plugins missing under /usr/lib/cni (package containernetworking-plugins)"
  command -v runc >/dev/null || fail "runc not found"
  [[ -x $CTR_BIN && -x $ETCD_BIN ]] || fail "containerd or etcd missing; run '$0 install'"
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    fail "a link named $BRIDGE already exists (another node running? set HAGW_K8S_NODE_BRIDGE)"
  fi
  if [[ -n $(ip -o addr show to "$NODE_IP/32" 2>/dev/null) ]]; then
    fail "$NODE_IP is already assigned on this host (another node running? set HAGW_K8S_NODE_IP)"
  fi
  local c
  for c in /sys/fs/cgroup/*"$CGROUP_ROOT"; do
    [[ -d $c ]] && fail "cgroup $c already exists (another node running? set HAGW_K8S_NODE_CGROUP)"
  done
  # Information only: these host settings affect bridged pod traffic, not the node itself.
  local nf fwd
  nf=$(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo n/a)
  fwd=$(iptables -S FORWARD 2>/dev/null || true); fwd=${fwd%%$'\n'*}
  say "host: cgroup $(stat -fc %T /sys/fs/cgroup), bridge-nf-call-iptables=$nf, iptables '${fwd:-n/a}', ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
}

# The control plane, shared by both modes. etcd keeps its data only where `start` left it
# (start_control_plane with HAGW_K8S_NODE_KEEP_DATA=1).
launch_etcd() {
  launch etcd "$ETCD_BIN" --name hagw-node --data-dir "$STATE/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "hagw-node=http://127.0.0.1:$ETCD_PEER_PORT" --quota-backend-bytes=2147483648
}

launch_apiserver() { # $1 = start time; waits for /readyz
  local t0=$1
  local pki=$STATE/pki
  launch apiserver "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --endpoint-reconciler-type=none \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --allow-privileged=true --profiling=false
  wait_for apiserver "ok from /readyz" api_get /readyz
  say "kube-apiserver $K8S_VERSION ready on https://127.0.0.1:$API_PORT after $((SECONDS - t0))s"
}

launch_controllers() { # kube-controller-manager and kube-scheduler: no ports (--secure-port=0)
  local pki=$STATE/pki
  launch kcm "$BIN/kube-controller-manager" --kubeconfig="$STATE/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --profiling=false \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --use-service-account-credentials=false --cluster-name=hagw-node \
    --flex-volume-plugin-dir="$STATE/kcm-volume-plugins"
  # DaemonSet pods get spec.affinity from the DaemonSet controller but are bound by the scheduler.
  launch scheduler "$BIN/kube-scheduler" --kubeconfig="$STATE/kubeconfig" \
    --authentication-kubeconfig="$STATE/kubeconfig" --authorization-kubeconfig="$STATE/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --profiling=false
}

# Control plane only: no containerd, kubelet, CNI, node IP, cgroup or sysctl; only processes
# bound to 127.0.0.1 on the three ports, with everything they write in the state dir.
start_control_plane() { # $1 = start time
  local t0=$1
  touch "$STATE/control-plane-only"
  make_pki
  write_kubeconfigs
  if [[ $KEEP_DATA == 1 && -d $STATE/etcd-data ]]; then say "reusing the etcd data in $STATE"
  else rm -rf "$STATE/etcd-data"
  fi
  launch_etcd
  wait_for etcd "healthy /health" curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"
  launch_apiserver "$t0"
  launch_controllers
  # The serviceaccount controller creating default/default shows the controllers are running.
  wait_for kcm "default ServiceAccount" api_get /api/v1/namespaces/default/serviceaccounts/default
  ours scheduler || { tail -n 30 "$STATE/scheduler.log" >&2; fail "kube-scheduler exited (log: $STATE/scheduler.log)"; }
}

launch_containerd() {
  launch containerd "$CTR_BIN" --config "$STATE/containerd/config.toml"
  wait_for containerd "socket" ctr --address "$SOCK" version
}

launch_kubelet() { # waits for the node to be Ready
  local kubelet_args=(--config="$STATE/kubelet-config.yaml" --kubeconfig="$STATE/kubelet.kubeconfig"
    --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" --hostname-override="$NODE_NAME"
    --node-ip="$NODE_IP" --v=1)
  # Still accepted by 1.34 (only keeps the image from image GC); dropped in later releases.
  if [[ $("$BIN/kubelet" --help 2>&1) == *--pod-infra-container-image* ]]; then
    kubelet_args+=(--pod-infra-container-image="$PAUSE_IMAGE")
  fi
  launch kubelet "$BIN/kubelet" "${kubelet_args[@]}"
  wait_for kubelet "healthz" curl -sf --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz"
  wait_for kubelet "Ready node $NODE_NAME" node_ready
}

cmd_start() {
  local t0=$SECONDS
  binaries_current 2>/dev/null || cmd_install

  local want=$KUBELET want_port=$API_PORT
  resolve_state
  API_PORT=$want_port # start uses the ports it is given
  if [[ $KUBELET != "$want" ]]; then
    fail "$STATE holds a $( ((KUBELET)) && echo 'whole node' || echo 'control plane only'): stop it, or use another HAGW_K8S_NODE_STATE"
  fi
  if [[ -n $STATE && -d $STATE ]]; then
    STATE=$(cd "$STATE" && pwd); SOCK=$STATE/run/containerd.sock
    local main=kubelet; ((KUBELET)) || main=apiserver
    if ours "$main" && ours apiserver; then say "already running (state $STATE)"; print_env; return 0; fi
    local comp
    for comp in $(components); do
      if ours "$comp"; then fail "$comp from an earlier start still runs in $STATE: run '$0 stop' first"; fi
    done
  fi

  local p ports=("$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT")
  if ((KUBELET)); then
    reclaim_dead_nodes
    check_host
    ports+=("$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT")
  else
    [[ -x $ETCD_BIN ]] || fail "etcd missing; run '$0 install'"
  fi
  for p in "${ports[@]}"; do
    if port_in_use "$p"; then fail "127.0.0.1:$p is already in use (see the HAGW_K8S_NODE_*_PORT variables)"; fi
  done
  if [[ -n ${HAGW_K8S_NODE_STATE:-} ]] || { ((!KUBELET && KEEP_DATA)) && [[ -n $STATE && -d $STATE ]]; }; then
    mkdir -p "$STATE"; STATE=$(cd "$STATE" && pwd)
  elif ((KUBELET)); then STATE=$(mktemp -d /tmp/hagw-k8s-node.XXXXXX)
  else STATE=$(mktemp -d /tmp/hagw-k8s-cp.XXXXXX)
  fi
  chmod 755 "$STATE"
  SOCK=$STATE/run/containerd.sock
  # A control plane in an explicit state dir (the tests: several at once) leaves the pointer alone.
  ((!KUBELET)) && [[ -n ${HAGW_K8S_NODE_STATE:-} ]] || echo "$STATE" > "$POINTER"
  trap 'say "start failed; stopping what was started (logs kept in $STATE)"; KEEP_LOGS=1 cmd_stop >/dev/null 2>&1 || true' EXIT

  if ((!KUBELET)); then
    start_control_plane "$t0"
    trap - EXIT
    say "control plane up in $((SECONDS - t0))s; state in $STATE"
    print_env
    return 0
  fi

  record_host
  register_node
  make_pki
  write_kubeconfigs
  write_containerd_config
  write_kubelet_config
  rm -rf "$STATE/etcd-data"

  # --- containerd first: importing the images overlaps with the control plane starting
  launch_containerd

  launch_etcd

  local img
  for img in pause probe; do
    ctr --address "$SOCK" -n k8s.io images import "$CACHE/images/$img.tar" >>"$STATE/ctr-import.log" 2>&1 \
      || { cat "$STATE/ctr-import.log" >&2; fail "ctr images import $img.tar failed"; }
  done
  local images; images=$(ctr --address "$SOCK" -n k8s.io images ls -q) # no `| grep -q`: SIGPIPE + pipefail
  grep -qx "$PAUSE_IMAGE" <<<"$images" || fail "$PAUSE_IMAGE not found in containerd after import"

  wait_for etcd "healthy /health" curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  launch_apiserver "$t0"
  launch_controllers

  setup_node_host
  launch_kubelet
  say "node $NODE_NAME Ready after $((SECONDS - t0))s"
  wait_for kcm "default ServiceAccount" api_get /api/v1/namespaces/default/serviceaccounts/default
  ours scheduler || { tail -n 30 "$STATE/scheduler.log" >&2; fail "kube-scheduler exited (log: $STATE/scheduler.log)"; }
  trap - EXIT
  say "node up in $((SECONDS - t0))s; state in $STATE"
  print_env
}

stop_comp() { # $1 = component: TERM, wait up to 10 s, KILL
  local comp=$1 pid _
  if ours "$comp"; then
    pid=$(cat "$STATE/$comp.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    say "stopped $comp (pid $pid)"
  fi
  rm -f "$STATE/$comp.pid"
}

our_shims() { # pids of containerd shims serving our containerd
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == */containerd-shim* ]] || continue
    [[ "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" == *"-address $SOCK "* ]] && echo "${p#/proc/}"
  done
  return 0
}

cgroup_dirs() { # every cgroup directory of our pods' cgroup tree, deepest first
  local c
  for c in /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup"$CGROUP_ROOT"; do
    [[ -d $c ]] && find "$c" -depth -type d
  done
  return 0
}

kill_cgroup_procs() {
  # The list is read while shims tear down cgroups (runc delete after their init died): a dir can
  # vanish between find and read, and a failed `< file` redirection would end the script (set -e).
  local d pid procs
  while read -r d; do
    procs=$(cat "$d/cgroup.procs" 2>/dev/null) || continue
    for pid in $procs; do kill -KILL "$pid" 2>/dev/null || true; done
  done < <(cgroup_dirs)
  return 0
}

umount_under() { # unmount everything mounted at or below $1, deepest first
  local prefix=$1 m _
  for _ in 1 2 3; do
    local left=0
    while read -r m; do
      left=1
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$prefix" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    ((left)) || return 0
  done
}

# Control plane only: the four processes of this state dir, then the dir itself. Nothing on the
# host outside it was touched by `start`, so nothing else is cleaned up (in particular not a full
# node's bridge, cgroups or sysctls that may be running next to it).
stop_control_plane() {
  stop_comp scheduler
  stop_comp kcm
  stop_comp apiserver
  stop_comp etcd
  if [[ $KEEP_DATA == 1 ]]; then
    say "kept $STATE (HAGW_K8S_NODE_KEEP_DATA=1: etcd data, certs, kubeconfig, logs)"
    return 0
  fi
  remove_state "$POINTER"
}

# Deletes $STATE (all but its logs with HAGW_K8S_NODE_KEEP_LOGS=1) and the pointer file $1 if
# it names $STATE.
remove_state() {
  local pointer=$1
  if [[ $KEEP_LOGS == 1 ]]; then
    find "$STATE" -mindepth 1 -maxdepth 1 ! -name '*.log' -exec rm -rf {} +
    say "removed $STATE except its logs"
  else
    rm -rf "$STATE"
    say "removed $STATE"
  fi
  if [[ -f $pointer && $(cat "$pointer") == "$STATE" ]]; then
    [[ $KEEP_LOGS == 1 ]] || rm -f "$pointer"
  fi
}

cmd_stop() {
  resolve_state
  if [[ -z $STATE || ! -d $STATE ]]; then say "nothing to stop (no state dir)"; return 0; fi
  # One stop at a time per node: a test's exit watchdog and a `start` reclaiming the same dead
  # node may both get here. The second waits, then finds the lock file it holds removed.
  exec 8>>"$STATE/.stop-lock"
  flock 8
  if [[ $(stat -c %i "$STATE/.stop-lock" 2>/dev/null) != "$(stat -L -c %i /proc/self/fd/8)" ]]; then
    say "already stopped by another stop ($STATE)"; return 0
  fi
  if ((!KUBELET)); then stop_control_plane; return; fi
  # kubelet first, so nothing restarts the pods we tear down next.
  stop_comp kubelet
  stop_comp scheduler
  stop_comp kcm
  if ours containerd && [[ -x $BIN/crictl ]]; then
    # CRI teardown: stops containers, runs CNI DEL (veth, IPAM), removes the netns.
    local cri=("$BIN/crictl" --runtime-endpoint "unix://$SOCK" --timeout 30s)
    local pods
    mapfile -t pods < <("${cri[@]}" pods -q 2>/dev/null)
    ((${#pods[@]} == 0)) || "${cri[@]}" stopp "${pods[@]}" >/dev/null 2>&1 || true
    "${cri[@]}" rmp -a -f >/dev/null 2>&1 || true
  fi
  kill_cgroup_procs
  local pid
  for pid in $(our_shims); do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in $(our_shims); do kill -KILL "$pid" 2>/dev/null || true; done
  stop_comp containerd
  stop_comp apiserver
  stop_comp etcd
  kill_cgroup_procs

  # Mounts (kubelet volumes, container rootfs, /dev/shm, netns) all live under the state dir.
  umount_under "$STATE"
  # The bridge and the address on lo live in the network namespace the node ran in: from
  # another one (a reclaim from elsewhere) they are not ours to remove.
  if [[ -f $STATE/host/netns && $(cat "$STATE/host/netns") == "$(netns_id)" ]]; then
    ip link show "$BRIDGE" >/dev/null 2>&1 && { ip link del "$BRIDGE" && say "removed bridge $BRIDGE"; }
    if [[ -f $STATE/host/lo-addr ]]; then
      ip addr del "$(cat "$STATE/host/lo-addr")" dev lo 2>/dev/null && say "removed $(cat "$STATE/host/lo-addr") from lo"
      rm -f "$STATE/host/lo-addr"
    fi
  else
    say "the node did not run in this network namespace: bridge $BRIDGE and the lo address left alone"
  fi
  local d
  while read -r d; do rmdir "$d" 2>/dev/null || true; done < <(cgroup_dirs)

  local h=$STATE/host s v
  if [[ -f $h/sysctls ]]; then
    while read -r s v; do
      [[ -w /proc/sys/$s && $(cat "/proc/sys/$s") != "$v" ]] && echo "$v" > "/proc/sys/$s" && say "restored $s=$v"
    done < "$h/sysctls"
  fi
  local t chain
  for t in iptables ip6tables; do
    [[ -f $h/$t-kube-chains ]] || continue
    command -v "$t-save" >/dev/null || continue
    "$t-save" 2>/dev/null | awk '/^\*/{tbl=substr($1,2)} /^:KUBE-/{print tbl, substr($1,2)}' |
      while read -r tbl chain; do
        grep -qx "$chain" "$h/$t-kube-chains" && continue
        "$t" -t "$tbl" -S 2>/dev/null | grep -- "-j $chain\b" | sed 's/^-A/-D/' |
          while read -r rule; do eval "$t -t $tbl $rule" 2>/dev/null || true; done
        "$t" -t "$tbl" -F "$chain" 2>/dev/null || true
        "$t" -t "$tbl" -X "$chain" 2>/dev/null && say "removed $t chain $tbl/$chain"
      done
  done
  # libcni's result cache (/var/lib/cni/results/<network>-<sandbox id>-<ifname>): CNI DEL removes
  # its entries, but not when containerd died before `stop`. Our sandbox ids are in our root.
  local id
  for id in "$STATE"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*; do
    id=${id##*/}
    [[ $id =~ ^[0-9a-f]{64}$ ]] && rm -f /var/lib/cni/results/*-"$id"-*
  done
  # Host paths the kubelet creates whatever its config says (see docs/k8s-node.md): our
  # device-plugin socket, and /var/log/containers links into our pod logs.
  [[ -S /var/lib/kubelet/device-plugins/kubelet.sock ]] && grep -qx /var/lib/kubelet "$h/absent" 2>/dev/null \
    && rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  local l
  for l in /var/log/containers/*; do
    [[ -L $l && $(readlink "$l") == "$STATE"/* ]] && rm -f "$l"
  done
  if [[ -f $h/absent ]]; then # those that did not exist before `start`: remove them when empty
    while read -r d; do
      [[ -d $d ]] || continue
      find "$d" -depth -type d -empty -delete 2>/dev/null || true
      if [[ -e $d ]]; then say "note: $d did not exist before start and is not empty now; left alone"
      else say "removed $d (created while the node ran)"; fi
    done < <(sort -r "$h/absent")
  fi

  local left
  left=$(awk -v p="$STATE" 'index($5, p "/") == 1' /proc/self/mountinfo | wc -l)
  if ((left)); then
    say "WARNING: $left mounts under $STATE remain; not deleting it"
    return 1
  fi
  rm -f "$REGISTRY/$(registry_key "$STATE")"
  remove_state "$CACHE/current-state"
}

# The node loses power: its own services die at once (SIGKILL: no container gets SIGTERM, so
# no agent hands anything back), the control plane (another machine in a real cluster) stays.
# Then what a boot clears goes: the runtime's state dir and runc's root (tmpfs /run), the
# pods' mounts and cgroups. What is on disk stays: images and containerd's metadata, the
# kubelet's root, the CNI IPAM data, the pods' hostPath volumes.
cmd_power_off() {
  resolve_state
  ((KUBELET)) && [[ -n $STATE && -d $STATE ]] || fail "no whole node to power off"
  local comp pid pids=() shims sockets=()
  for comp in kubelet containerd; do
    ours "$comp" && pids+=("$(cat "$STATE/$comp.pid")")
  done
  shims=$(our_shims)
  pids+=($shims)
  # A killed shim leaves its socket in /run/containerd/s (docs/k8s-node.md); a boot would clear it.
  for pid in $shims; do
    mapfile -t -O "${#sockets[@]}" sockets < <(ss -xlpn 2>/dev/null |
      awk -v p="pid=$pid," 'index($0, p) && $5 ~ "^/run/containerd/s/" {print $5}')
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  kill_cgroup_procs
  local _
  for pid in "${pids[@]}"; do # gone, or a zombie nobody reaps yet: dead either way
    for _ in $(seq 200); do
      [[ -e /proc/$pid && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
      sleep 0.05
    done
  done
  rm -f "$STATE/kubelet.pid" "$STATE/containerd.pid"
  ((${#sockets[@]} == 0)) || rm -f "${sockets[@]}"
  kill_cgroup_procs
  umount_under "$STATE/containerd/state"
  umount_under "$STATE/run"
  umount_under "$STATE/kubelet"
  rm -rf "$STATE/containerd/state" "$STATE/run"
  mkdir -p "$STATE/run"
  local d # the pods' cgroups, not the node's root (kept, as setup_node_host made it)
  while read -r d; do
    [[ $d == *"$CGROUP_ROOT" ]] || rmdir "$d" 2>/dev/null || true
  done < <(cgroup_dirs)
  say "powered off the node's kubelet, containerd and containers (state $STATE)"
}

# The node boots again after `power-off`: containerd, then the kubelet, which starts the pods
# bound to this node afresh, as after a reboot.
cmd_power_on() {
  resolve_state
  ((KUBELET)) && [[ -n $STATE && -f $STATE/kubelet-config.yaml ]] || fail "no whole node to power on"
  ours containerd || ours kubelet && fail "containerd or the kubelet already runs"
  local t0=$SECONDS
  launch_containerd
  launch_kubelet
  say "node $NODE_NAME Ready again after $((SECONDS - t0))s"
}

cmd_status() {
  resolve_state
  local comp rc=0
  echo "cache: $CACHE ($( [[ -f $BIN/BUILD_ID ]] && cat "$BIN/BUILD_ID" || echo 'not built'))"
  echo "state: ${STATE:-none}"
  for comp in $(components); do
    if ours "$comp"; then
      echo "$comp: running (pid $(cat "$STATE/$comp.pid"), rss $(ps -o rss= -p "$(cat "$STATE/$comp.pid")" | tr -d ' ') KiB)"
    else
      echo "$comp: stopped"; rc=1
    fi
  done
  if ((!KUBELET)); then
    if ((rc == 0)) && api_get /readyz >/dev/null 2>&1; then echo "readyz: ok"; elif ((rc == 0)); then echo "readyz: not ok"; rc=1; fi
  elif ((rc == 0)) && node_ready; then echo "node $NODE_NAME: Ready"; elif ((rc == 0)); then echo "node $NODE_NAME: not Ready"; rc=1; fi
  return $rc
}

cmd_env() {
  resolve_state
  [[ -n $STATE ]] || fail "no state dir known; run '$0 start' first or set HAGW_K8S_NODE_STATE"
  print_env
}

# ---------------------------------------------------------------------------------------------
# selftest: what the project needs to know from a real node
# ---------------------------------------------------------------------------------------------

cmd_selftest() {
  resolve_state
  if ! ours kubelet || ! ours apiserver; then fail "node not running; run '$0 start' first"; fi
  local ns=hagw-selftest t0=$SECONDS out
  kc delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kc create namespace "$ns" >/dev/null
  trap 'kc delete namespace '"$ns"' --wait=false >/dev/null 2>&1 || true' RETURN
  kc -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: probe-hostnet}
spec:
  selector: {matchLabels: {app: probe-hostnet}}
  template:
    metadata: {labels: {app: probe-hostnet}}
    spec:
      hostNetwork: true
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 2
      containers:
      - name: probe
        image: $PROBE_IMAGE
        imagePullPolicy: Never
        securityContext: {privileged: false, allowPrivilegeEscalation: false}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-podnet}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: probe
    image: $PROBE_IMAGE
    imagePullPolicy: Never
    securityContext: {privileged: false}
---
apiVersion: v1
kind: Pod
metadata: {name: probe-privileged}
spec:
  hostNetwork: true
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers:
  - name: probe
    image: $PROBE_IMAGE
    imagePullPolicy: Never
    securityContext: {privileged: true}
EOF
  kc -n "$ns" rollout status ds/probe-hostnet --timeout="${TIMEOUT}s" >&2
  kc -n "$ns" wait --for=condition=Ready pod --all --timeout="${TIMEOUT}s" >&2
  kc -n "$ns" get pods -o wide >&2
  local ds_pod; ds_pod=$(kc -n "$ns" get pod -l app=probe-hostnet -o 'jsonpath={.items[0].metadata.name}')
  say "scheduled by: $(kc -n "$ns" get events --field-selector involvedObject.name="$ds_pod",reason=Scheduled -o 'jsonpath={.items[0].source.component}{.items[0].reportingComponent}')"
  local pod ok=1 line
  for pod in "$ds_pod" probe-podnet probe-privileged; do
    line=$(kc -n "$ns" exec "$pod" -- /hagw-probe mountinfo | awk '$1 == "/proc/sys"')
    say "$pod: /proc/sys mount: ${line:-<not a separate mount>}"
    out=$(kc -n "$ns" exec "$pod" -- /hagw-probe write /proc/sys/kernel/domainname "$(cat /proc/sys/kernel/domainname)" 2>&1 || true)
    say "$pod: $out"
    if [[ $pod == probe-privileged ]]; then
      [[ $out == *ok* ]] || ok=0
    else
      [[ $line == *' ro,'* || $line == *' ro '* ]] && [[ $out == *'read-only file system'* ]] || ok=0
    fi
  done
  # No kube-proxy: the `kubernetes` Service IP is not routed, but a hostNetwork pod shares the
  # host's loopback, where the API server listens.
  out=$(kc -n "$ns" exec "$ds_pod" -- /hagw-probe dial "127.0.0.1:$API_PORT" 2>&1) || ok=0
  say "$ds_pod: $out"
  say "kubectl logs $ds_pod (first lines):"
  out=$(kc -n "$ns" logs "$ds_pod") || ok=0 # (no `| head`: SIGPIPE + pipefail)
  sed -n '1,12p' <<<"$out" >&2

  # helm: install/uninstall a one-DaemonSet chart on the node.
  local chart; chart=$(mktemp -d)
  mkdir -p "$chart/templates"
  printf 'apiVersion: v2\nname: hagw-selftest\nversion: 0.1.0\n' > "$chart/Chart.yaml"
  cat > "$chart/templates/ds.yaml" <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: {{ .Release.Name }}}
spec:
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      hostNetwork: true
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 2
      containers:
      - {name: pause, image: $PAUSE_IMAGE, imagePullPolicy: Never}
EOF
  KUBECONFIG=$STATE/kubeconfig HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config \
    HELM_DATA_HOME=$STATE/helm/data "$BIN/helm" install hagw-helm "$chart" -n "$ns" --wait --timeout "${TIMEOUT}s" >&2 || ok=0
  KUBECONFIG=$STATE/kubeconfig HELM_CACHE_HOME=$STATE/helm/cache HELM_CONFIG_HOME=$STATE/helm/config \
    HELM_DATA_HOME=$STATE/helm/data "$BIN/helm" uninstall hagw-helm -n "$ns" --wait >&2 || ok=0
  rm -rf "$chart"
  kc delete namespace "$ns" --wait=true --timeout="${TIMEOUT}s" >/dev/null || true
  ((ok)) || fail "selftest failed after $((SECONDS - t0))s"
  say "selftest passed in $((SECONDS - t0))s"
}

case ${1:-} in
  install)  cmd_install ;;
  start|start-control-plane) cmd_start ;;
  stop)     cmd_stop ;;
  status)   cmd_status ;;
  env)      cmd_env ;;
  selftest) cmd_selftest ;;
  power-off) cmd_power_off ;;
  power-on)  cmd_power_on ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) fail "usage: $0 install|start|start-control-plane|stop|status|env|selftest|power-off|power-on (see $0 --help)" ;;
esac
