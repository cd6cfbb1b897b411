#!/usr/bin/env bash
# kube-apiserver.sh - a real Kubernetes control plane on 127.0.0.1 for hagw's
# integration tests, built only from Debian packages (no binary downloads):
#
#   etcd                     Debian 12 package `etcd-server` (3.4.x)
#   kube-apiserver           v1.20.x compiled from Debian 12's `kubernetes` *source* package
#   kube-controller-manager  same source (namespace deletion, garbage collection,
#                            default ServiceAccounts, ...)
#
# There is no kubelet or scheduler: Pods are stored but never run.
#
# Usage:
#   scripts/kube-apiserver.sh install   # apt packages + download + build (idempotent, cached)
#   scripts/kube-apiserver.sh start     # install if needed, start everything, wait for /readyz,
#                                       # print `export ...` lines on stdout:
#                                       #   eval "$(scripts/kube-apiserver.sh start)"
#   scripts/kube-apiserver.sh stop      # stop exactly the processes `start` launched (pid files)
#   scripts/kube-apiserver.sh status    # exit 0 when etcd + apiserver (+ controller-manager) run
#   scripts/kube-apiserver.sh env       # print the `export ...` lines again
#
# Environment (all optional):
#   HAGW_K8S_CACHE       build cache, kept between runs          (default /var/cache/hagw/k8s)
#   HAGW_K8S_STATE       runtime dir: certs, etcd data, logs, pid files, kubeconfig
#                        (default: a fresh /tmp/hagw-k8s.XXXXXX per `start`; `stop`, `status`
#                        and `env` then find it through $HAGW_K8S_CACHE/current-state)
#   HAGW_K8S_API_PORT    kube-apiserver HTTPS port on 127.0.0.1  (default 26443)
#   HAGW_K8S_ETCD_PORT   etcd client port on 127.0.0.1           (default 23790)
#   HAGW_K8S_ETCD_PEER_PORT  etcd peer port on 127.0.0.1         (default 23800)
#   HAGW_K8S_KCM         1 = run kube-controller-manager too      (default 1)
#   HAGW_K8S_GO          bullseye = Go 1.15 (Kubernetes 1.20's own toolchain) unpacked from
#                        Debian 11 .debs into the cache, nothing installed system-wide (default)
#                        bookworm = Debian 12 golang-go 1.19, with the vendored reflect2 v1.0.1
#                        replaced by Debian's v1.0.2 (v1.0.1 crashes under Go >= 1.18)
#   HAGW_K8S_KEEP_SRC    1 = keep the unpacked source tree after a build (default 0, ~1.5 GB)
#   HAGW_K8S_KEEP_DATA   1 = keep etcd data when re-starting in the same HAGW_K8S_STATE (default 0)
#   HAGW_K8S_TIMEOUT     seconds to wait for each component to become ready (default 120)
#   HAGW_DEBIAN_MIRROR   Debian mirror for the source / bullseye downloads
#                        (default http://deb.debian.org/debian)
#
# Everything but the final `export` lines goes to stderr. Never prompts; works with CI=true and
# no stdin. /etc/apt is never modified: the deb-src and bullseye indexes live in a private apt
# configuration under $HAGW_K8S_CACHE.
set -euo pipefail

CACHE=${HAGW_K8S_CACHE:-/var/cache/hagw/k8s}
API_PORT=${HAGW_K8S_API_PORT:-26443}
ETCD_PORT=${HAGW_K8S_ETCD_PORT:-23790}
ETCD_PEER_PORT=${HAGW_K8S_ETCD_PEER_PORT:-23800}
RUN_KCM=${HAGW_K8S_KCM:-1}
GO_KIND=${HAGW_K8S_GO:-bullseye}
KEEP_SRC=${HAGW_K8S_KEEP_SRC:-0}
KEEP_DATA=${HAGW_K8S_KEEP_DATA:-0}
TIMEOUT=${HAGW_K8S_TIMEOUT:-120}
MIRROR=${HAGW_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Change this whenever the build recipe below changes: cached binaries with another value are rebuilt.
RECIPE=1

export DEBIAN_FRONTEND=noninteractive
# A user's `go env -w` file (e.g. GOFLAGS=-buildvcs=false) must not apply: Go 1.15 rejects
# flags that newer Go versions added, even for `go version`.
export GOENV=off

say() { printf '[kube-apiserver.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }

case $GO_KIND in bullseye|bookworm) ;; *) fail "HAGW_K8S_GO must be 'bullseye' or 'bookworm', not '$GO_KIND'" ;; esac
for v in API_PORT ETCD_PORT ETCD_PEER_PORT TIMEOUT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || fail "$v must be a number, got '${!v}'"
done

# ---------------------------------------------------------------------------------------------
# install: Debian packages, sources, toolchain, build
# ---------------------------------------------------------------------------------------------

# apt-get options for a private configuration named $1 whose sources.list holds the line $2.
# Only indexes and downloads go under $CACHE; the system's dpkg status is read, never written.
apt_private() {
  local dir=$CACHE/apt/$1
  mkdir -p "$dir/lists/partial" "$dir/archives/partial"
  printf '%s\n' "$2" > "$dir/sources.list"
  APT_OPTS=(-q -o "Dir::Etc::SourceList=$dir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir" -o "Dir::Cache::Archives=$dir/archives"
            -o "Dir::State::status=/var/lib/dpkg/status" -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
  apt-get "${APT_OPTS[@]}" update >/dev/null || fail "apt-get update failed for private source '$2'"
}

apt_install_missing() {
  local want=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || want+=("$p")
  done
  ((${#want[@]})) || return 0
  say "apt-get install ${want[*]}"
  local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  # On a fresh machine the package lists may be missing or stale: update once and retry.
  if ! "${apt[@]}" install --no-install-recommends "${want[@]}" >/dev/null; then
    say "install failed; running apt-get update and retrying"
    "${apt[@]}" update >/dev/null || fail "apt-get update failed"
    "${apt[@]}" install --no-install-recommends "${want[@]}" >/dev/null || fail "apt-get install ${want[*]} failed"
  fi
}

go_bin() {
  if [[ $GO_KIND == bullseye ]]; then echo "$CACHE/go1.15/usr/lib/go-1.15/bin/go"; else echo /usr/lib/go/bin/go; fi
}

fetch_inputs() {
  local pkgs=(etcd-server openssl curl ca-certificates)
  [[ $GO_KIND == bookworm ]] && pkgs+=(golang-go golang-github-modern-go-reflect2-dev)
  apt_install_missing "${pkgs[@]}"

  mkdir -p "$CACHE/dl"
  if ! compgen -G "$CACHE/dl/kubernetes_*.orig.tar.*" >/dev/null; then
    say "downloading the Debian 12 source package 'kubernetes'"
    apt_private bookworm-src "deb-src [signed-by=$KEYRING] $MIRROR bookworm main"
    (cd "$CACHE/dl" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >/dev/null) \
      || fail "could not download the 'kubernetes' source package from $MIRROR"
  fi

  if [[ $GO_KIND == bullseye && ! -x $(go_bin) ]]; then
    say "unpacking Go 1.15 from Debian 11 .debs into $CACHE/go1.15 (not installed system-wide)"
    apt_private bullseye "deb [signed-by=$KEYRING] $MIRROR bullseye main"
    rm -rf "$CACHE/dl/go1.15" "$CACHE/go1.15"
    mkdir -p "$CACHE/dl/go1.15"
    (cd "$CACHE/dl/go1.15" && apt-get "${APT_OPTS[@]}" download golang-1.15-go golang-1.15-src >/dev/null) \
      || fail "could not download golang-1.15-go/golang-1.15-src from $MIRROR bullseye"
    local deb
    for deb in "$CACHE"/dl/go1.15/*.deb; do dpkg-deb -x "$deb" "$CACHE/go1.15"; done
    [[ -x $(go_bin) ]] || fail "Go 1.15 not found at $(go_bin) after unpacking"
  fi
}

build_id() { # what the cached binaries were built from
  local src; src=$(basename "$(compgen -G "$CACHE/dl/kubernetes_*.orig.tar.*" | head -1)")
  echo "src=$src go=$GO_KIND/$("$(go_bin)" version | awk '{print $3}') kcm=$RUN_KCM recipe=$RECIPE"
}

binaries_current() {
  [[ -x $CACHE/bin/kube-apiserver && -f $CACHE/bin/BUILD_ID ]] || return 1
  [[ $RUN_KCM != 1 || -x $CACHE/bin/kube-controller-manager ]] || return 1
  compgen -G "$CACHE/dl/kubernetes_*.orig.tar.*" >/dev/null && [[ -x $(go_bin) ]] || return 1
  [[ "$(cat "$CACHE/bin/BUILD_ID")" == "$(build_id)" ]]
}

build() {
  local t0=$SECONDS tarball top version gopath=$CACHE/gopath
  tarball=$(compgen -G "$CACHE/dl/kubernetes_*.orig.tar.*" | head -1)
  say "building kube-apiserver from $(basename "$tarball") with $("$(go_bin)" version | awk '{print $3}')"
  say "(about 5-10 minutes on 2 cores when nothing is cached; later runs skip this)"

  rm -rf "$CACHE/src" "$CACHE/bin.new" "$gopath"
  mkdir -p "$CACHE/src" "$gopath/src/k8s.io" "$gopath/bin"
  tar -xf "$tarball" -C "$CACHE/src"
  top=$(find "$CACHE/src" -mindepth 1 -maxdepth 1 -type d | head -1)
  [[ -f $top/go.mod && -d $top/vendor && -d $top/cmd/kube-apiserver ]] \
    || fail "unexpected layout of $(basename "$tarball"): no go.mod/vendor/cmd/kube-apiserver in $top"
  version=$(basename "$top"); version=v${version#kubernetes-}
  [[ $version =~ ^v1\.([0-9]+)\. ]] || fail "cannot read a Kubernetes version from '$top'"
  local minor=${BASH_REMATCH[1]}

  if [[ $GO_KIND == bookworm ]]; then
    local r2=$top/vendor/github.com/modern-go/reflect2
    find "$r2" -maxdepth 1 -name '*.go' -delete
    cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r2/"
  fi

  # GOPATH mode: the tree must live at $GOPATH/src/k8s.io/kubernetes.
  ln -sfn "$top" "$gopath/src/k8s.io/kubernetes"
  export PATH=$(dirname "$(go_bin)"):$PATH GOPATH=$gopath GOCACHE=$CACHE/gocache GO111MODULE=off \
         CGO_ENABLED=0 GOFLAGS= GOPROXY=off GOTOOLCHAIN=local
  cd "$gopath/src/k8s.io/kubernetes"

  # pkg/generated/openapi is produced at build time upstream; generate it with the vendored
  # openapi-gen over every package tagged `+k8s:openapi-gen=` (staging repos via vendor/).
  go build -o "$gopath/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  local pkglist
  local roots=() d
  for d in */; do [[ $d == vendor/ || $d == _* ]] || roots+=("${d%/}"); done
  pkglist=$( { grep -rl --include='*.go' -e '+k8s:openapi-gen=' "${roots[@]}" || true; } \
            | { xargs -r grep -l '^// *+k8s:' || true; } \
            | sed -e 's|^staging/src/|vendor/|' -e 's|/[^/]*$||' \
            | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
            | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  [[ -n $pkglist ]] || fail "found no packages tagged for openapi-gen"
  "$gopath/bin/openapi-gen" --input-dirs "$pkglist" --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-file-base zz_generated.openapi --go-header-file vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    --report-filename "$CACHE/openapi-violations.txt" 2>"$CACHE/openapi-gen.log" \
    || { tail -20 "$CACHE/openapi-gen.log" >&2; fail "openapi-gen failed (log: $CACHE/openapi-gen.log)"; }

  local ld="-s -w" vpkg
  for vpkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    vpkg=k8s.io/kubernetes/vendor/$vpkg
    ld+=" -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
  done
  local cmds=(./cmd/kube-apiserver)
  [[ $RUN_KCM == 1 ]] && cmds+=(./cmd/kube-controller-manager)
  mkdir -p "$CACHE/bin.new"
  go build -trimpath -ldflags "$ld" -o "$CACHE/bin.new/" "${cmds[@]}" || fail "go build ${cmds[*]} failed"
  cd /
  build_id > "$CACHE/bin.new/BUILD_ID"
  rm -rf "$CACHE/bin" && mv "$CACHE/bin.new" "$CACHE/bin"
  [[ $KEEP_SRC == 1 ]] || rm -rf "$CACHE/src" "$gopath"
  say "build finished in $((SECONDS - t0))s: $(du -sh "$CACHE/bin" | cut -f1) in $CACHE/bin ($version)"
}

cmd_install() {
  local t0=$SECONDS
  mkdir -p "$CACHE"
  # One installer at a time per cache dir (parallel CI jobs on the same machine).
  exec 9>"$CACHE/.lock"
  flock -w 3600 9 || fail "timed out waiting for the lock on $CACHE/.lock"
  fetch_inputs
  if binaries_current; then
    say "cached binaries are current ($(cat "$CACHE/bin/BUILD_ID"))"
  else
    build
  fi
  flock -u 9
  say "install done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# start / stop / status
# ---------------------------------------------------------------------------------------------

# The state dir: explicit, else the one the last `start` recorded (for stop/status/env).
resolve_state() {
  if [[ -n ${HAGW_K8S_STATE:-} ]]; then STATE=$HAGW_K8S_STATE
  elif [[ -f $CACHE/current-state ]]; then STATE=$(cat "$CACHE/current-state")
  else STATE=
  fi
}

# Which executable each component runs; a pid only counts as ours if it runs that file.
exe_of() {
  case $1 in
    etcd) command -v etcd ;;
    apiserver) echo "$CACHE/bin/kube-apiserver" ;;
    kcm) echo "$CACHE/bin/kube-controller-manager" ;;
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
  echo "export HAGW_K8S_STATE=$STATE"
}

make_pki() {
  local d=$STATE/pki
  [[ -f $d/token && -f $d/apiserver.crt && -f $d/sa.key ]] && return 0
  mkdir -p "$d" && chmod 700 "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=hagw-local-ca -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr
    cat > apiserver.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EOF
    openssl x509 -req -days 3650 -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -extfile apiserver.ext -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    openssl rand -hex 32 > token
    # static token file: token,user,uid,"group1,group2"
    echo "$(cat token),hagw-admin,hagw-admin,system:masters" > tokens.csv
    chmod 600 ca.key apiserver.key sa.key token tokens.csv
  ) >"$STATE/pki.log" 2>&1 || { cat "$STATE/pki.log" >&2; fail "creating certificates with openssl failed"; }
}

write_kubeconfig() {
  cat > "$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hagw-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$STATE/pki/ca.crt")
users:
- name: hagw-admin
  user:
    token: $(cat "$STATE/pki/token")
contexts:
- name: hagw-local
  context:
    cluster: hagw-local
    user: hagw-admin
    namespace: default
current-context: hagw-local
EOF
  chmod 600 "$STATE/kubeconfig"
}

launch() { # $1 = component, $2.. = command line; detached, no stdin, log in the state dir
  setsid "${@:2}" >"$STATE/$1.log" 2>&1 </dev/null &
  echo $! > "$STATE/$1.pid"
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
    sleep 0.2
  done
}

api_get() { # $1 = path; succeeds on HTTP 2xx
  curl -sSf --max-time 5 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(cat "$STATE/pki/token")" \
    "https://127.0.0.1:$API_PORT$1"
}

cmd_start() {
  local t0=$SECONDS
  binaries_current 2>/dev/null || cmd_install
  command -v etcd >/dev/null || fail "etcd not found; run '$0 install'"

  resolve_state
  if [[ -z ${HAGW_K8S_STATE:-} ]]; then
    if [[ -n $STATE ]] && ours apiserver; then
      say "already running (state $STATE)"; print_env; return 0
    fi
    STATE=$(mktemp -d /tmp/hagw-k8s.XXXXXX)
  fi
  mkdir -p "$STATE"
  STATE=$(cd "$STATE" && pwd)
  if ours apiserver; then say "already running (state $STATE)"; print_env; return 0; fi

  local p
  for p in "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT"; do
    port_in_use "$p" && fail "127.0.0.1:$p is already in use (set HAGW_K8S_API_PORT / HAGW_K8S_ETCD_PORT / HAGW_K8S_ETCD_PEER_PORT)"
  done
  echo "$STATE" > "$CACHE/current-state"
  # Whatever fails from here on: stop what this run started.
  trap 'say "start failed; stopping what was started"; cmd_stop >/dev/null 2>&1 || true' EXIT

  make_pki
  write_kubeconfig
  [[ $KEEP_DATA == 1 ]] || rm -rf "$STATE/etcd-data"

  launch etcd etcd --name hagw --data-dir "$STATE/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "hagw=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for etcd "healthy /health" curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health"

  local pki=$STATE/pki
  launch apiserver "$CACHE/bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
    --token-auth-file="$pki/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --enable-priority-and-fairness=false --profiling=false
  wait_for apiserver "ok from /readyz" api_get /readyz
  say "kube-apiserver ready on https://127.0.0.1:$API_PORT after $((SECONDS - t0))s"

  if [[ $RUN_KCM == 1 ]]; then
    # Controllers that need nodes, clouds or volumes are left out: there are none here.
    launch kcm "$CACHE/bin/kube-controller-manager" --kubeconfig="$STATE/kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 --port=0 --leader-elect=false --profiling=false \
      --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
      --use-service-account-credentials=false \
      --controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-pvc-protection,-pv-protection,-ttl,-bootstrapsigner,-tokencleaner'
    # Its serviceaccount controller creating default/default shows the controllers are running.
    wait_for kcm "default ServiceAccount" api_get /api/v1/namespaces/default/serviceaccounts/default
    say "kube-controller-manager running after $((SECONDS - t0))s"
  fi
  trap - EXIT
  say "control plane up in $((SECONDS - t0))s; state in $STATE"
  print_env
}

cmd_stop() {
  resolve_state
  if [[ -z $STATE || ! -d $STATE ]]; then say "nothing to stop (no state dir)"; return 0; fi
  local comp pid i
  for comp in kcm apiserver etcd; do
    if ours "$comp"; then
      pid=$(cat "$STATE/$comp.pid")
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
      say "stopped $comp (pid $pid)"
    fi
    rm -f "$STATE/$comp.pid"
  done
}

cmd_status() {
  resolve_state
  local comp rc=0 comps=(etcd apiserver)
  [[ $RUN_KCM == 1 ]] && comps+=(kcm)
  echo "cache: $CACHE ($( [[ -f $CACHE/bin/BUILD_ID ]] && cat "$CACHE/bin/BUILD_ID" || echo 'not built'))"
  echo "state: ${STATE:-none}"
  for comp in "${comps[@]}"; do
    if ours "$comp"; then
      echo "$comp: running (pid $(cat "$STATE/$comp.pid"), rss $(ps -o rss= -p "$(cat "$STATE/$comp.pid")" | tr -d ' ') KiB)"
    else
      echo "$comp: stopped"; rc=1
    fi
  done
  if ((rc == 0)) && api_get /readyz >/dev/null 2>&1; then echo "readyz: ok"; elif ((rc == 0)); then echo "readyz: not ok"; rc=1; fi
  return $rc
}

cmd_env() {
  resolve_state
  [[ -n $STATE ]] || fail "no state dir known; run '$0 start' first or set HAGW_K8S_STATE"
  print_env
}

case ${1:-} in
  install) cmd_install ;;
  start)   cmd_start ;;
  stop)    cmd_stop ;;
  status)  cmd_status ;;
  env)     cmd_env ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) fail "usage: $0 install|start|stop|status|env (see $0 --help)" ;;
esac
