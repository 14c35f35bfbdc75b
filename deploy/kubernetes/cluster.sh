#!/usr/bin/env bash
# A single-node Kubernetes (v1.20.2, built from Debian bookworm's source package) on this
# machine: the test cluster of docs/kubernetes.md. `cargo xtask cluster up|down|status`
# runs this script.
#
#   cluster.sh up       installs what it needs (apt), builds the server binaries once
#                       (cached in /var/cache/chaos-ebpf/kubernetes), then starts etcd,
#                       kube-apiserver, kube-controller-manager, kube-scheduler,
#                       containerd, kubelet and kube-proxy, waits for the node to be
#                       Ready and checks that a pod reaches another pod through a
#                       ClusterIP Service. Admin kubeconfig:
#                       /var/lib/chaos-ebpf/cluster/admin.kubeconfig
#   cluster.sh down     stops all of it, removes the pods, mounts, the CNI bridge and
#                       its veths, the state directories, puts back iptables, sysctls and
#                       ip_forward as they were before `up`, then checks nothing is left
#                       (exit 1 naming what is).
#   cluster.sh status   what runs, and whether the node is Ready.
#   cluster.sh build    only installs the packages and builds (or finds cached) the
#                       binaries and images.
#
# Exit 2: a prerequisite is missing or something is in the way (nothing was changed).
set -euo pipefail

cache=${CHAOS_K8S_CACHE:-/var/cache/chaos-ebpf/kubernetes}
run=/run/chaos-ebpf/cluster
data=/var/lib/chaos-ebpf/cluster
before="$run/before"
pki="$data/pki"
logs="$data/logs"
kubeconfig="$data/admin.kubeconfig"
sock="$run/containerd/containerd.sock"
# docs/addresses.md: the Kubernetes ranges.
pod_cidr=198.51.100.128/26
pod_gateway=198.51.100.129
service_cidr=198.51.100.192/26
service_ip=198.51.100.193
# The check Service's address is fixed: Kubernetes 1.20 allocates ClusterIPs at random from
# the whole range, and one taken at random can be one the lab chart fixes (.239 to .242).
check_service_ip=198.51.100.194
node="$(hostname | tr '[:upper:]' '[:lower:]')"
bridge=chaos-k8s0
etcd_client=127.0.0.1:22379
etcd_peer=127.0.0.1:22380
# The API server and the kubelet listen on the pod bridge's address only (the cluster's
# range of docs/addresses.md), never on the machine's own interface.
apiserver=https://198.51.100.129:6443
pause_image=localhost/chaos-pause:1
busybox_image=localhost/chaos-busybox:1
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Started in this order, stopped in the reverse one.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
# What kubelet, kube-proxy and the CNI bridge plugin set; `down` puts each back.
sysctls=(net.ipv4.ip_forward vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
# Host directories kubelet and CNI write outside our own: removed at `down` when `up`
# created them.
host_dirs=(/var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers /run/containerd /etc/cni /opt/cni)

say() { echo "cluster: $*" >&2; }
fail() { echo "cluster: $1" >&2; exit "${2:-1}"; }
t_phase=$SECONDS
phase() { say "$1 ($((SECONDS - t_phase)) s)"; t_phase=$SECONDS; }
kctl() { kubectl --kubeconfig "$kubeconfig" --request-timeout=10s "$@"; }
ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }
pid_of() { cat "$run/pids/$1" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
iptables_rules() { "${1:-iptables}-save" 2>/dev/null | grep -v '^#' || true; }
interfaces() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }
our_mounts() {
  awk '{print $5}' /proc/self/mountinfo \
    | grep -E "^(/var/lib/kubelet|$data|$run|/run/containerd|/run/netns/cni-|/var/run/netns/cni-)" | sort -r || true
}
kube_cgroups() { ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null || true; }

# ---------------------------------------------------------------- prerequisites

require_root() {
  [ "$(id -u)" = 0 ] || fail "needs root (it runs kubelet, containerd and kube-proxy, which change mounts, cgroups and iptables): run it as root, e.g. sudo cargo xtask cluster up" 2
}

# Refuses (exit 2, nothing changed) when something is in the way.
check_in_the_way() {
  local problems=() p
  if pgrep -x dockerd >/dev/null; then
    problems+=("a dockerd runs (pid $(pgrep -x dockerd | tr '\n' ' ')): its containerd, bridges and iptables chains would mix with the cluster's; stop it first (deploy/compose/stack.sh down, or kill that dockerd)")
  fi
  for p in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy containerd; do
    if pgrep -f "^([^ ]*/)?$p( |\$)" >/dev/null; then
      problems+=("a $p runs (pid $(pgrep -f "^([^ ]*/)?$p( |\$)" | tr '\n' ' ')) that this script did not start: another cluster is up; take it down first")
    fi
  done
  for p in 6443 10250 10248 10249 10256 10257 10259 ${etcd_client##*:} ${etcd_peer##*:}; do
    if ss -Htln "sport = :$p" | grep -q .; then
      problems+=("TCP port $p is in use ($(ss -Htlnp "sport = :$p" | awk '{print $NF}' | head -1)): the cluster needs it")
    fi
  done
  [ ! -e /var/lib/kubelet ] || problems+=("/var/lib/kubelet exists: another kubelet's state, or a cluster not taken down; run \`cargo xtask cluster down\` or remove it (umount what is under it first)")
  [ -z "$(kube_cgroups)" ] || problems+=("kubepods cgroups exist ($(kube_cgroups | tr '\n' ' ')): another kubelet's; stop it and remove them")
  ! ip link show "$bridge" >/dev/null 2>&1 || problems+=("the bridge $bridge exists: \`cargo xtask cluster down\` or ip link del $bridge")
  local routed
  routed="$(ip -4 route show table all | grep -E '^((local|broadcast|blackhole|unreachable|prohibit|throw) )?198\.51\.100\.(12[89]|1[3-9][0-9]|2[0-5][0-9])([/ ]|$)' || true)"
  [ -z "$routed" ] || problems+=("198.51.100.128/25 (docs/addresses.md: Kubernetes pods $pod_cidr and services $service_cidr) is routed here already: $(echo "$routed" | head -3 | tr '\n' ';') -- remove what uses it")
  if [ ${#problems[@]} -gt 0 ]; then
    for p in "${problems[@]}"; do echo "cluster: cannot start: $p" >&2; done
    exit 2
  fi
}

# ---------------------------------------------------------------- install and build

install_packages() {
  local missing=() pkg
  for pkg in golang-go golang-github-modern-go-reflect2-dev rsync make gcc libc6-dev containerd runc containernetworking-plugins etcd-server openssl kubectl \
    busybox-static iptables iproute2 dpkg-dev curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

source_dir() { ls -d "$cache"/src/kubernetes-*/ 2>/dev/null | head -1 | sed 's:/$::'; }

fetch_source() {
  [ -n "$(source_dir)" ] && [ -f "$(source_dir)/Makefile" ] && return
  if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src .* bookworm ' /etc/apt/sources.list; then
    say "adding a deb-src line for bookworm (/etc/apt/sources.list.d/chaos-ebpf-deb-src.sources)"
    cat > /etc/apt/sources.list.d/chaos-ebpf-deb-src.sources <<SRC
# Added by \`cargo xtask cluster up\` (chaos-ebpf): Kubernetes is built from Debian's source package.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
  fi
  mkdir -p "$cache/src"
  say "apt-get source kubernetes (into $cache/src)"
  local fetched=0
  (cd "$cache/src" && apt-get source -qq kubernetes >&2) && fetched=1
  # The deb-src line was only for this: the host's apt goes back to what it was.
  if grep -qs 'Added by `cargo xtask cluster up`' /etc/apt/sources.list.d/chaos-ebpf-deb-src.sources; then
    rm -f /etc/apt/sources.list.d/chaos-ebpf-deb-src.sources
    apt-get update -qq || true
  fi
  [ "$fetched" = 1 ] \
    || fail "apt-get source kubernetes failed: is there a deb-src line for bookworm, and does apt reach its mirror?"
}

# What the cached binaries were built with beyond Debian's source tree: binaries without
# this stamp are built again.
build_stamp() {
  echo "vendored reflect2 replaced by Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
}

# Kubernetes 1.20 vendors reflect2 1.0.1, whose map iteration faults under Go >= 1.18:
# the API server dies (SIGSEGV in mapiterinit) at the first create of a custom resource.
# Debian's golang-github-modern-go-reflect2-dev (1.0.2) is the upstream fix, API-compatible.
patch_reflect2() {
  local src="$1" fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$fixed/reflect2.go" ] || fail "$fixed is missing: apt-get install golang-github-modern-go-reflect2-dev"
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r "$fixed" "$src/vendor/github.com/modern-go/reflect2"
  rm -rf "$src/vendor/github.com/modern-go/reflect2/debian" "$src/vendor/github.com/modern-go/reflect2/go.mod" \
    "$src/vendor/github.com/modern-go/reflect2"/*_test.go
}

build() {
  local b missing=()
  for b in "${binaries[@]}"; do [ -x "$cache/bin/$b" ] || missing+=("$b"); done
  if [ "$(cat "$cache/bin/.stamp" 2>/dev/null)" != "$(build_stamp)" ]; then missing=("${binaries[@]}"); fi
  if [ ${#missing[@]} -eq 0 ]; then
    say "binaries cached in $cache/bin: no build"
    return
  fi
  fetch_source
  local src what=""
  src="$(source_dir)"
  for b in "${missing[@]}"; do what+="cmd/$b "; done
  say "building ${missing[*]} from $src (niced; 5-7 min cold on 2 cores)"
  mkdir -p "$cache/bin"
  # One build at a time in the source tree.
  (
    flock 9
    cd "$src"
    patch_reflect2 "$src"
    CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor nice -n 19 make WHAT="${what% }" > "$cache/build.log" 2>&1 \
      || { tail -30 "$cache/build.log" >&2; fail "the build failed (log: $cache/build.log)"; }
    for b in "${missing[@]}"; do install -m 0755 "_output/bin/$b" "$cache/bin/$b"; done
    build_stamp > "$cache/bin/.stamp"
    # The tree and its Go build cache are 2.8 GB, and only the binaries are used from here
    # on: a later build fetches the source again (33 MB).
    cd /
    rm -rf "$cache/src"
  ) 9> "$cache/build.lock"
}

# A docker-archive image (manifest.json, config, one layer) from a directory.
make_image() {
  local name="$1" rootfs="$2" out="$3" cmd="$4" tmp diff
  tmp="$(mktemp -d)"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$tmp/layer.tar" .
  diff="$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
  cat > "$tmp/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Cmd":$cmd,"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:$diff"]}}
JSON
  echo "[{\"Config\":\"config.json\",\"RepoTags\":[\"$name\"],\"Layers\":[\"layer.tar\"]}]" > "$tmp/manifest.json"
  tar -C "$tmp" -cf "$out" manifest.json config.json layer.tar
  rm -rf "$tmp"
}

build_images() {
  local dir="$cache/images"
  [ -f "$dir/pause.tar" ] && [ -f "$dir/busybox.tar" ] && return
  mkdir -p "$dir"
  local tmp
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/pause"
  cat > "$tmp/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
static void stop(int sig) { (void)sig; exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGINT, stop); signal(SIGTERM, stop); signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  gcc -static -O2 -o "$tmp/pause/pause" "$tmp/pause.c"
  strip "$tmp/pause/pause"
  make_image "$pause_image" "$tmp/pause" "$dir/pause.tar" '["/pause"]'
  mkdir -p "$tmp/busybox/bin" "$tmp/busybox/tmp" "$tmp/busybox/etc"
  cp /bin/busybox "$tmp/busybox/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$tmp/busybox/bin/$applet"
  done
  echo 'root:x:0:0:root:/:/bin/sh' > "$tmp/busybox/etc/passwd"
  make_image "$busybox_image" "$tmp/busybox" "$dir/busybox.tar" '["/bin/sh"]'
  rm -rf "$tmp"
}

# ---------------------------------------------------------------- certificates

# cert NAME CN [O] [SANS]: a key and a certificate signed by the cluster's CA.
cert() {
  local name="$1" cn="$2" o="${3:-}" sans="${4:-}" subj="/CN=$2"
  [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

# kubeconfig FILE USER-CERT-NAME
kubeconfig_for() {
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: chaos-k8s
  cluster: {server: $apiserver, certificate-authority: $pki/ca.crt}
users:
- name: $2
  user: {client-certificate: $pki/$2.crt, client-key: $pki/$2.key}
contexts:
- name: chaos-k8s
  context: {cluster: chaos-k8s, user: $2}
current-context: chaos-k8s
KC
}

make_pki() {
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 \
    -subj "/CN=chaos-ebpf test cluster CA" 2>/dev/null
  cert apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$service_ip,IP:$node_ip"
  cert admin admin system:masters
  cert kubelet "system:node:$node" system:nodes "DNS:$node,IP:$node_ip,IP:127.0.0.1"
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kube-proxy system:kube-proxy
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  local u
  for u in admin kubelet controller-manager scheduler kube-proxy; do kubeconfig_for "$data/$u.kubeconfig" "$u"; done
  chmod 0600 "$pki"/*.key
}

# ---------------------------------------------------------------- host state

record_host() {
  mkdir -p "$before"
  iptables_rules iptables > "$before/iptables"
  iptables_rules ip6tables > "$before/ip6tables"
  interfaces > "$before/interfaces"
  local s d
  : > "$before/sysctls"
  for s in "${sysctls[@]}"; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(cat "/proc/sys/${s//.//}")" >> "$before/sysctls"
  done
  : > "$before/created-dirs"
  for d in "${host_dirs[@]}"; do [ -e "$d" ] || echo "$d" >> "$before/created-dirs"; done
}

# ---------------------------------------------------------------- processes

start() {
  local name="$1"
  shift
  mkdir -p "$run/pids" "$logs"
  # Without the descriptors this shell inherited beyond 0-2: a daemon must not hold, say,
  # the kernel tests' flock on /tmp/chaos-kernel-tests.lock after the session ends.
  (
    for fd in $(ls "/proc/$BASHPID/fd"); do
      [ "$fd" -gt 2 ] && eval "exec $fd>&-"
    done 2>/dev/null
    exec setsid "$@" < /dev/null > "$logs/$name.log" 2>&1
  ) &
  echo $! > "$run/pids/$name"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.5 s.
wait_for() {
  local limit="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  while [ $SECONDS -lt $deadline ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

need() {
  local what="$1" limit="$2" component="$3"
  shift 3
  if ! wait_for "$what" "$limit" "$@"; then
    [ -n "$component" ] && tail -15 "$logs/$component.log" >&2
    fail "$what: not within $limit s (logs: $logs/; take it down with \`cargo xtask cluster down\`)"
  fi
}

stop_pid() {
  local name="$1" pid="$2" limit="${3:-20}"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < limit * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  say "$name (pid $pid) did not stop within $limit s of SIGTERM: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

# ---------------------------------------------------------------- up

write_configs() {
  mkdir -p "$data/cni" "$data/cni-ipam" "$run/containerd" "$data/containerd"
  cat > "$data/cni/10-chaos-k8s.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "chaos-k8s",
  "plugins": [{
    "type": "bridge", "bridge": "$bridge", "isGateway": true, "isDefaultGateway": true,
    "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$data/cni-ipam",
             "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]]}
  }]
}
JSON
  cat > "$data/containerd.toml" <<TOML
version = 2
root = "$data/containerd"
state = "$run/containerd"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$sock.debug"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$run/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$data/cni"
TOML
  cat > "$data/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
makeIPTablesUtilChains: false
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet.crt
tlsPrivateKeyFile: $pki/kubelet.key
clusterDomain: cluster.local
readOnlyPort: 0
address: $node_ip
healthzBindAddress: 127.0.0.1
healthzPort: 10248
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
YAML
  cat > "$data/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $data/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $pod_cidr
hostnameOverride: $node
# Service traffic is masqueraded to the bridge's address: the reply of a pod on the same
# bridge then comes back through the host (no br_netfilter needed).
iptables: {masqueradeAll: true}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
YAML
}

start_components() {
  local bin="$cache/bin"
  start etcd etcd --name chaos-k8s --data-dir "$data/etcd" \
    --listen-client-urls "http://$etcd_client" --advertise-client-urls "http://$etcd_client" \
    --listen-peer-urls "http://$etcd_peer" --initial-advertise-peer-urls "http://$etcd_peer" \
    --initial-cluster "chaos-k8s=http://$etcd_peer" --initial-cluster-state new
  need "etcd answering on $etcd_client" 30 etcd curl -fsS "http://$etcd_client/health"
  phase "etcd on $etcd_client"
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://$etcd_client" \
    --secure-port 6443 --insecure-port 0 --advertise-address "$node_ip" --bind-address "$node_ip" \
    --service-cluster-ip-range "$service_cidr" --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
    --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local
  need "kube-apiserver ready" 60 kube-apiserver kctl get --raw /readyz
  phase "kube-apiserver on $apiserver"
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$data/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$data/controller-manager.kubeconfig" --authorization-kubeconfig "$data/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$service_cidr" --allocate-node-cidrs=false
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$data/scheduler.kubeconfig" \
    --authentication-kubeconfig "$data/scheduler.kubeconfig" --authorization-kubeconfig "$data/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --leader-elect=false
  start containerd containerd --config "$data/containerd.toml"
  need "containerd answering on $sock" 30 containerd ctr_ version
  ctr_ images import "$cache/images/pause.tar" >/dev/null
  ctr_ images import "$cache/images/busybox.tar" >/dev/null
  phase "controller-manager, scheduler, containerd ($pause_image and $busybox_image imported)"
  start kubelet "$bin/kubelet" --config "$data/kubelet.yaml" --kubeconfig "$data/kubelet.kubeconfig" \
    --container-runtime remote --container-runtime-endpoint "unix://$sock" \
    --pod-infra-container-image "$pause_image" --hostname-override "$node" --node-ip "$node_ip"
  start kube-proxy "$bin/kube-proxy" --config "$data/kube-proxy.yaml"
  need "node $node Ready" 120 kubelet node_ready
  phase "kubelet and kube-proxy; node $node Ready"
}

has_endpoint() {
  [ -n "$(kctl -n chaos-k8s-check get endpoints server -o jsonpath='{.subsets[0].addresses[0].ip}' 2>/dev/null)" ]
}

node_ready() {
  [ "$(kctl get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# A pod reaches another pod through a ClusterIP Service, in the namespace chaos-k8s-check.
check_service() {
  kctl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: chaos-k8s-check}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: chaos-k8s-check, labels: {app: server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: $busybox_image
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /tmp/www && echo chaos-k8s-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www']
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: chaos-k8s-check}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: $busybox_image
    imagePullPolicy: Never
    command: [sleep, '3600']
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: chaos-k8s-check}
spec:
  clusterIP: $check_service_ip
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
YAML
  need "pods server and client Ready" 90 kubelet kctl -n chaos-k8s-check wait --for=condition=Ready --timeout=5s pod/server pod/client
  local ip
  ip="$(kctl -n chaos-k8s-check get service server -o jsonpath='{.spec.clusterIP}')"
  need "service server ($ip) with an endpoint" 30 "" has_endpoint
  local reply="" i
  for ((i = 0; i < 30; i++)); do
    # busybox-static's wget crashes in a bare image (static glibc); nc does not.
    reply="$(kctl -n chaos-k8s-check exec client -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $ip 80" \
      2> "$run/check-error" | tail -1 || true)"
    [ "$reply" = chaos-k8s-ok ] && break
    sleep 1
  done
  [ "$reply" = chaos-k8s-ok ] || cat "$run/check-error" >&2
  [ "$reply" = chaos-k8s-ok ] || fail "pod client did not reach pod server through the Service IP $ip within 30 tries (kube-proxy log: $logs/kube-proxy.log)"
  echo "$ip" > "$run/check-service-ip"
  phase "pod client reached pod server through the ClusterIP Service $ip:80"
}

cmd_up() {
  require_root
  if [ -d "$run/pids" ]; then
    if alive kube-apiserver && alive kubelet && node_ready; then
      say "the cluster is up already: kubectl --kubeconfig $kubeconfig get nodes"
      return 0
    fi
    fail "a cluster state is in $run but the cluster is not (fully) running: take it down first (cargo xtask cluster down)" 2
  fi
  check_in_the_way
  local t0=$SECONDS
  install_packages
  phase "packages"
  build
  build_images
  phase "binaries and images"
  # The node's address is the pod bridge's: made here, before the API server binds to it
  # (the CNI bridge plugin takes the bridge as it finds it).
  node_ip=$pod_gateway
  record_host
  mkdir -p "$data" "$logs"
  echo "$node" > "$run/node"
  make_pki
  write_configs
  # The FORWARD policy may be DROP (a dockerd ran here): the pod range is allowed
  # explicitly; `down` restores the rules as they were.
  iptables -I FORWARD -s "$pod_cidr" -j ACCEPT -m comment --comment chaos-k8s
  iptables -I FORWARD -d "$pod_cidr" -j ACCEPT -m comment --comment chaos-k8s
  ip link add "$bridge" type bridge
  ip addr add "$pod_gateway/${pod_cidr#*/}" dev "$bridge"
  ip link set "$bridge" up
  phase "certificates, configuration, bridge $bridge ($pod_gateway), host state recorded in $before"
  start_components
  check_service
  say "up in $((SECONDS - t0)) s. Use it with: kubectl --kubeconfig $kubeconfig get pods -A"
}

# ---------------------------------------------------------------- down

restore_iptables() {
  local tool="$1" file="$2" family="$3" table
  for table in $(iptables_rules "$tool" | grep -oE '^\*[a-z]+' | tr -d '*'); do
    grep -q "^\*$table\$" "$file" && continue
    if "$tool" -V | grep -q nf_tables; then
      nft delete table "$family" "$table" 2>/dev/null || true
    else
      "$tool" -t "$table" -F && "$tool" -t "$table" -X
    fi
  done
  [ -s "$file" ] && "$tool-restore" < "$file"
  [ "$(iptables_rules "$tool")" = "$(cat "$file")" ]
}

cmd_down() {
  require_root
  local left=() t0=$SECONDS c pid
  if [ ! -d "$run" ] && [ ! -d "$data" ]; then
    say "nothing is up (no $run, no $data)"
    return 0
  fi
  # Nothing restarts or reschedules pods once these are gone.
  for c in kube-proxy kube-scheduler kube-controller-manager; do
    pid="$(pid_of "$c")"
    [ -n "$pid" ] && stop_pid "$c" "$pid" 10
  done
  # Pods through the API while kubelet runs: it tears their sandboxes down through CRI
  # (CNI DEL: veth, IP address).
  if alive kube-apiserver && alive kubelet; then
    kctl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
    # Stopped sandboxes stay (kubelet removes them later): wait for no running task.
    wait_for "pods stopped" 30 bash -c "! ctr --address $sock --namespace k8s.io tasks ls 2>/dev/null | grep -q RUNNING" \
      || say "tasks still running 30 s after deleting the pods: killing them through containerd"
  fi
  pid="$(pid_of kubelet)"
  [ -n "$pid" ] && stop_pid kubelet "$pid" 20
  # What is left, through containerd itself.
  if alive containerd; then
    local id
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    sleep 0.5
    for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  fi
  for c in containerd kube-apiserver etcd; do
    pid="$(pid_of "$c")"
    [ -n "$pid" ] && stop_pid "$c" "$pid" 20
  done
  # The shims (they outlive containerd) and the pods' processes under them.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true); do stop_pid containerd-shim "$pid" 5; done
  # Mounts: sandboxes' netns, pods' volumes, containerd's snapshots.
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -f /run/netns/cni-* /var/run/netns/cni-* 2>/dev/null || true
  # The CNI bridge and what is left of its veths.
  local dev
  for dev in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    ip link del "$dev" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
  # The pods' cgroups, deepest first.
  local cg
  for cg in $(kube_cgroups); do
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # Host state as recorded before `up`.
  if [ -d "$before" ]; then
    restore_iptables iptables "$before/iptables" ip || left+=("iptables rules differ from before up ($before/iptables)")
    restore_iptables ip6tables "$before/ip6tables" ip6 || left+=("ip6tables rules differ from before up")
    local line
    while IFS= read -r line; do
      [ -n "$line" ] && echo "${line#*=}" > "/proc/sys/$(echo "${line%%=*}" | tr . /)"
    done < "$before/sysctls"
    while IFS= read -r dir; do
      [ -n "$dir" ] && [ -e "$dir" ] && [ -z "$(our_mounts | grep "^$dir" || true)" ] && rm -rf "$dir"
    done < "$before/created-dirs"
  else
    left+=("no record of the host before up ($before): iptables and sysctls not restored")
  fi
  # Check.
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    pid="$(pid_of "$c")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && left+=("process $c (pid $pid)")
  done
  [ -z "$(pgrep -f "containerd-shim-runc-v2 .*-address $sock" || true)" ] || left+=("containerd shims")
  [ -z "$(our_mounts)" ] || left+=("mounts: $(our_mounts | tr '\n' ' ')")
  ip link show "$bridge" >/dev/null 2>&1 && left+=("interface $bridge")
  [ -z "$(kube_cgroups)" ] || left+=("cgroups: $(kube_cgroups | tr '\n' ' ')")
  if [ -d "$before" ]; then
    [ "$(interfaces)" = "$(cat "$before/interfaces")" ] \
      || left+=("interfaces differ from before up: $(diff <(cat "$before/interfaces") <(interfaces) | grep '^[<>]' | tr '\n' ' ')")
    while IFS= read -r line; do
      [ -n "$line" ] || continue
      [ "$(cat "/proc/sys/$(echo "${line%%=*}" | tr . /)")" = "${line#*=}" ] || left+=("sysctl ${line%%=*} is not ${line#*=} again")
    done < "$before/sysctls"
    while IFS= read -r dir; do [ -n "$dir" ] && [ -e "$dir" ] && left+=("$dir"); done < "$before/created-dirs"
  fi
  if [ ${#left[@]} -eq 0 ]; then
    rm -rf "$run" "$data"
    rmdir /run/chaos-ebpf /var/lib/chaos-ebpf 2>/dev/null || true
    say "down in $((SECONDS - t0)) s; nothing left (the build cache stays in $cache)"
  else
    local l
    for l in "${left[@]}"; do echo "cluster: down left: $l" >&2; done
    fail "down left ${#left[@]} thing(s) (state kept in $run and $data for another \`down\`)"
  fi
}

cmd_status() {
  if [ ! -d "$run/pids" ]; then
    say "down (no $run/pids)"
    return 0
  fi
  local c
  for c in "${components[@]}"; do
    if alive "$c"; then say "$c: running (pid $(pid_of "$c"))"; else say "$c: NOT running"; fi
  done
  if alive kube-apiserver && node_ready; then
    say "node $node: Ready; kubectl --kubeconfig $kubeconfig get pods -A"
  else
    say "node $node: not Ready"
    return 1
  fi
}

cmd_build() {
  require_root
  install_packages
  build
  build_images
}

case "${1:-}" in
  up|down|status|build) command="$1"; shift; "cmd_$command" "$@" ;;
  -h|--help|help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
