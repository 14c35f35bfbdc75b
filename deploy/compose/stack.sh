#!/usr/bin/env bash
# The chaos stack (docker-compose.chaos.yml): up, a scenario inside it, down.
#
#   sudo deploy/compose/stack.sh up [--nodes N] [--bin-dir DIR]
#       builds the image (images.sh), starts a dockerd if none answers on
#       /var/run/docker.sock, brings the stack up and waits until every service is
#       healthy and Prometheus scrapes every target (at most 120 s).
#   sudo deploy/compose/stack.sh run SCENARIO [RUN-FLAGS...]
#       runs deploy/compose/scenarios/SCENARIO.yaml (or a file) with the agent's
#       chaos-ebpf; the run directory, with every container's log and a Prometheus
#       snapshot added, and its bundle land in /var/lib/chaos-ebpf/stack/runs/.
#       Exits with chaos-ebpf's code (0 hypothesis held, 1 it did not, 2 bad input).
#   sudo deploy/compose/stack.sh status
#   sudo deploy/compose/stack.sh down [--keep-images]
#       removes the containers, network and volume (and the image unless
#       --keep-images); a dockerd that `up` started is stopped and what it changed on
#       the host (docker0, iptables, ip_forward) is put back; then checks nothing is left.
#
# docs/compose.md has the details. Exit 2: bad arguments or a missing prerequisite.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
project=chaos-stack
state=/run/chaos-ebpf/stack
data=/var/lib/chaos-ebpf/stack
runs="$data/runs"
# The stack's PKI (etcd speaks TLS): minted at `up`, removed at `down`.
pki="$data/pki"
socket=/var/run/docker.sock
# docs/addresses.md: docker0 and the compose networks.
bip=198.51.100.65/28
pool=base=198.51.100.96/27,size=27
prometheus_url=http://198.51.100.101:9090

say() { echo "stack: $*" >&2; }
fail() { echo "stack: $1" >&2; exit "${2:-1}"; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

docker_() { docker -H "unix://$socket" "$@"; }
compose() {
  local image
  image="$(cat "$state/image" 2>/dev/null || true)"
  [ -n "$image" ] || image="chaos-ebpf-stack:unknown"
  COMPOSE_PROJECT_NAME=$project CHAOS_STACK_IMAGE="$image" \
    CHAOS_STACK_NODES="$(cat "$state/nodes" 2>/dev/null || echo 5)" CHAOS_STACK_RUNS="$runs" CHAOS_STACK_PKI="$pki" \
    DOCKER_HOST="unix://$socket" "${compose_cmd[@]}" -f "$here/docker-compose.chaos.yml" "$@"
}

prerequisites() {
  [ "$(id -u)" = 0 ] || fail "needs root (the agent loads BPF programs; dockerd): run it with sudo" 2
  command -v docker >/dev/null || fail "docker is missing: apt-get install docker.io" 2
  if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
  elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
  else
    fail "neither \`docker compose\` nor docker-compose is there: apt-get install docker-compose" 2
  fi
}

# The iptables rules without the comment lines (they carry the time).
iptables_rules() { iptables-save 2>/dev/null | grep -v '^#' || true; }

start_dockerd() {
  if docker_ version >/dev/null 2>&1; then
    say "using the dockerd on $socket (it is left as it is at \`down\`)"
    return
  fi
  command -v dockerd >/dev/null || fail "dockerd is missing: apt-get install docker.io" 2
  if ip link show docker0 >/dev/null 2>&1; then
    fail "a docker0 bridge is there without a daemon answering on $socket: start that daemon, or delete the bridge (ip link del docker0)" 2
  fi
  local used
  used="$(ip -4 route show | grep -E '^198\.51\.100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])' || true)"
  [ -z "$used" ] || fail "198.51.100.64/26 (docs/addresses.md: Docker) is routed here already: $used" 2
  mkdir -p "$state" "$data/docker"
  iptables_rules > "$state/iptables.before"
  cat /proc/sys/net/ipv4/ip_forward > "$state/ip_forward.before"
  say "starting dockerd (--bip $bip --default-address-pool $pool, data in $data/docker)"
  setsid dockerd --host "unix://$socket" --bip "$bip" --default-address-pool "$pool" \
    --data-root "$data/docker" --exec-root "$state/docker-exec" --pidfile "$state/dockerd.pid" \
    < /dev/null > "$state/dockerd.log" 2>&1 &
  echo $! > "$state/dockerd.own" # setsid execs dockerd: this is its PID
  for _ in $(seq 1 300); do
    docker_ version >/dev/null 2>&1 && return
    kill -0 "$(cat "$state/dockerd.own")" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$state/dockerd.log" >&2
  fail "dockerd did not answer on $socket within 30 s (log: $state/dockerd.log)"
}

# Every container of the stack healthy, and Prometheus scraping them all.
wait_healthy() {
  local nodes="$1" deadline=$((SECONDS + 120)) ids statuses want scraped
  want=$((nodes + 5)) # prometheus, 3 etcd members, the agent
  while :; do
    ids="$(docker_ ps -aq --filter "label=com.docker.compose.project=$project")"
    statuses="$(echo "$ids" | xargs -r docker -H "unix://$socket" inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}')"
    if ! echo "$statuses" | grep -qv ' healthy$' && [ "$(echo "$ids" | wc -w)" -eq "$want" ]; then
      scraped="$(docker_ exec chaos-stack-agent wget -qO- "$prometheus_url/api/v1/query?query=count(up%7Bjob!%3D%22run%22%7D%3D%3D1)" 2>/dev/null \
        | grep -oE '"value":\[[^]]*\]' | grep -oE '"[0-9]+"' | tr -d '"' || true)"
      [ "${scraped:-0}" -eq "$want" ] && return
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "$statuses" >&2
      fail "the stack was not healthy within 120 s (Prometheus scrapes ${scraped:-0} of $want targets); \`$0 status\` and \`docker logs\` tell more"
    fi
    sleep 1
  done
}

cmd_up() {
  local nodes=5 bin_dir="$repo/target/release"
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes="${2:?--nodes needs a number}"; shift 2 ;;
      --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
      *) fail "unknown argument '$1' to up (see --help)" 2 ;;
    esac
  done
  [[ "$nodes" =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 16 ] \
    || fail "--nodes $nodes: give 1 to 16 (the nodes take their addresses from 198.51.100.112/28)" 2
  local t0=$SECONDS
  start_dockerd
  mkdir -p "$state" "$runs"
  echo "$nodes" > "$state/nodes"
  local image
  image="$("$here/images.sh" --bin-dir "$bin_dir" --docker-host "unix://$socket")"
  echo "$image" > "$state/image"
  # A new CA for a new stack; a stack already up keeps the one its members use.
  if [ -z "$(docker_ ps -aq --filter "label=com.docker.compose.project=$project")" ]; then
    rm -rf "$pki"
    "$bin_dir/chaos-ebpf" lab pki --dir "$pki" --member chaos-stack-etcd-1=198.51.100.98 \
      --member chaos-stack-etcd-2=198.51.100.99 --member chaos-stack-etcd-3=198.51.100.100 >/dev/null \
      || fail "minting the stack's certificates into $pki failed"
  fi
  say "image $image ($((SECONDS - t0)) s); starting etcd x3, $nodes nodes, Prometheus and the agent"
  compose up -d --quiet-pull >&2 2>&1 | grep -v '^$' >&2 || true
  wait_healthy "$nodes"
  say "up in $((SECONDS - t0)) s: Prometheus $prometheus_url, dashboard http://198.51.100.102:9465/dashboard"
}

cmd_run() {
  [ $# -ge 1 ] || fail "run needs a scenario: a name from $here/scenarios/ or a file" 2
  local scenario="$1" name file
  shift
  docker_ inspect chaos-stack-agent >/dev/null 2>&1 || fail "the stack is not up: $0 up" 2
  if [ -f "$here/scenarios/$scenario.yaml" ]; then
    file="/scenarios/$scenario.yaml"
    name="$scenario"
  elif [ -f "$scenario" ]; then
    name="$(basename "$scenario" .yaml)"
    docker_ cp "$scenario" "chaos-stack-agent:/tmp/$name.yaml"
    file="/tmp/$name.yaml"
  else
    fail "no scenario '$scenario': neither $here/scenarios/$scenario.yaml nor a file" 2
  fi
  local run_name="$name-$(date -u +%Y%m%dT%H%M%SZ)"
  local code=0
  docker_ exec chaos-stack-agent chaos-ebpf run "$file" --run-dir "/runs/$run_name" \
    --metrics-addr 0.0.0.0:9466 "$@" || code=$?
  local dir="$runs/$run_name"
  if [ -d "$dir" ]; then
    collect "$dir"
    say "run directory $dir, bundle $dir.tar.gz"
  fi
  return $code
}

# Adds the stack's side of a run to its directory (every container's log, a Prometheus
# snapshot) and packs the bundle again in the format of chaos-ebpf's own (name order,
# 0:0, 0644/0755).
collect() {
  local dir="$1" id name snapshot
  mkdir -p "$dir/stack/logs"
  for id in $(docker_ ps -aq --filter "label=com.docker.compose.project=$project"); do
    name="$(docker_ inspect -f '{{.Name}}' "$id" | tr -d /)"
    docker_ logs --timestamps "$id" > "$dir/stack/logs/$name.log" 2>&1 || true
  done
  snapshot="$(docker_ exec chaos-stack-agent wget -qO- --post-data '' "$prometheus_url/api/v1/admin/tsdb/snapshot" \
    | grep -oE '"name":"[^"]+"' | cut -d'"' -f4 || true)"
  if [ -n "$snapshot" ]; then
    docker_ exec chaos-stack-prometheus tar -C /prometheus/snapshots -c "$snapshot" | gzip -n > "$dir/stack/prometheus-snapshot.tar.gz"
    docker_ exec chaos-stack-prometheus rm -rf "/prometheus/snapshots/$snapshot"
  else
    say "Prometheus took no snapshot (the bundle has none)"
  fi
  compose ps > "$dir/stack/services.txt" 2>&1 || true
  tar --sort=name --owner=0 --group=0 --numeric-owner --mode='u=rwX,go=rX' \
    -C "$(dirname "$dir")" -cf - "$(basename "$dir")" | gzip -n > "$dir.tar.gz"
}

cmd_status() {
  docker_ version >/dev/null 2>&1 || { say "no dockerd answers on $socket: the stack is down"; return 0; }
  compose ps
  docker_ exec chaos-stack-agent wget -qO- "$prometheus_url/api/v1/alerts" 2>/dev/null \
    | grep -oE '"alertname":"[^"]+"|"state":"[^"]+"' | paste -d' ' - - | sed 's/^/alert /' || true
}

cmd_down() {
  local keep_images=0 left=() image
  while [ $# -gt 0 ]; do
    case "$1" in
      --keep-images) keep_images=1; shift ;;
      *) fail "unknown argument '$1' to down (see --help)" 2 ;;
    esac
  done
  local t0=$SECONDS
  if docker_ version >/dev/null 2>&1; then
    # SIGKILL after 5 s: etcd members stopping together take 4-6 s (a leader hands
    # over), and what they hold goes with the volume anyway.
    compose down --volumes --remove-orphans --timeout 5 >&2 2>&1 || left+=("compose down failed")
    if [ $keep_images = 0 ]; then
      for image in $(docker_ images -q --filter "label=org.opencontainers.image.title=chaos-ebpf-stack" | sort -u); do
        docker_ rmi -f "$image" >/dev/null || left+=("image $image")
      done
    fi
    [ -z "$(docker_ ps -aq --filter "label=com.docker.compose.project=$project")" ] || left+=("containers of $project")
    [ -z "$(docker_ network ls -q --filter "label=com.docker.compose.project=$project")" ] || left+=("networks of $project")
    [ -z "$(docker_ volume ls -q --filter "label=com.docker.compose.project=$project")" ] || left+=("volumes of $project")
  fi
  if [ -f "$state/dockerd.own" ]; then
    local pid
    pid="$(cat "$state/dockerd.own")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; left+=("dockerd did not stop within 20 s of SIGTERM"); }
    # dockerd leaves its bridge, its chains and forwarding on: put the host back.
    ip link del docker0 2>/dev/null || true
    restore_iptables "$state/iptables.before" || left+=("iptables rules differ from before dockerd")
    cat "$state/ip_forward.before" > /proc/sys/net/ipv4/ip_forward
    ip link show docker0 >/dev/null 2>&1 && left+=("docker0")
    grep -q " $data/docker" /proc/self/mountinfo && left+=("mounts under $data/docker")
    [ $keep_images = 0 ] && rm -rf "$data/docker"
    [ -d "$state/docker-exec" ] && ! grep -q " $state/docker-exec" /proc/self/mountinfo && rm -rf "$state/docker-exec"
  fi
  rm -rf "$state" "$pki"
  # Run bundles outlive `down`; the directories that held only them go when empty.
  rmdir "$runs" 2>/dev/null || true
  rmdir "$data" 2>/dev/null || true
  [ -z "$(ip -4 route show | grep '198\.51\.100\.9[6-9]\|198\.51\.100\.1[01][0-9]\|198\.51\.100\.12[0-7]' || true)" ] \
    || left+=("a route into the compose range 198.51.100.96/27")
  if [ ${#left[@]} -gt 0 ]; then
    fail "down left: $(IFS=';'; echo "${left[*]}")"
  fi
  say "down in $((SECONDS - t0)) s; nothing left"
}

# The tables there before are restored; tables dockerd created are deleted
# (iptables-nft; with the legacy backend, flushed).
restore_iptables() {
  local before="$1" table
  for table in $(iptables_rules | grep -oE '^\*[a-z]+' | tr -d '*'); do
    grep -q "^\*$table\$" "$before" && continue
    if iptables -V | grep -q nf_tables; then
      nft delete table ip "$table"
    else
      iptables -t "$table" -F && iptables -t "$table" -X
    fi
  done
  [ -s "$before" ] && iptables-restore < "$before"
  [ "$(iptables_rules)" = "$(cat "$before")" ]
}

case "${1:-}" in
  up|run|status|down)
    command="$1"
    shift
    prerequisites
    "cmd_$command" "$@"
    ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
