#!/bin/sh
# Service discovery for the lab's Prometheus: Debian's Prometheus is built without
# kubernetes_sd_configs, so this loop (busybox sh and wget, in the same image) lists the
# pods through the Kubernetes API every INTERVAL seconds and writes one file_sd file per
# job, which Prometheus reloads on change.
#
#   discover.sh OUT_DIR INTERVAL JOB:NAMESPACE:LABEL_SELECTOR:PORT...
#
# A job's targets are the Running pods of NAMESPACE matching LABEL_SELECTOR (may be
# empty) that declare container port PORT: POD_IP:PORT, labelled pod=<pod name>. A
# failed listing keeps the job's last file. busybox wget's TLS does not verify the
# server's certificate: the token (list pods in two namespaces, nothing else) goes to
# whatever answers at the kubernetes Service's address.
set -u
# PID 1 of its container: without a trap SIGTERM would be ignored until the grace period.
trap 'exit 0' TERM INT
out="$1" interval="$2"
shift 2
api="https://${KUBERNETES_SERVICE_HOST:?not in a pod}:${KUBERNETES_SERVICE_PORT:-443}"
token=/var/run/secrets/kubernetes.io/serviceaccount/token

discover() {
  job="$1" namespace="$2" selector="$3" port="$4"
  # Not "Wget": the API server pretty-prints JSON for wget and curl.
  list="$(wget -q -O - -U chaos-lab-discover --no-check-certificate \
    --header "Authorization: Bearer $(cat "$token")" \
    "$api/api/v1/namespaces/$namespace/pods?labelSelector=$selector&fieldSelector=status.phase%3DRunning&pretty=false")" ||
    { echo "discover: listing the pods of $namespace for $job failed" >&2; return 1; }
  groups=""
  # One line per pod: each item of the list starts with its metadata, name first.
  while read -r item; do
    case "$item" in *"\"containerPort\":$port,"* | *"\"containerPort\":$port}"*) ;; *) continue ;; esac
    ip="$(echo "$item" | sed -n 's/.*"podIP":"\([0-9a-f.:]*\)".*/\1/p')"
    [ -n "$ip" ] || continue
    groups="$groups${groups:+,}{\"targets\":[\"$ip:$port\"],\"labels\":{\"pod\":\"${item%%\"*}\"}}"
  done <<ITEMS
$(echo "$list" | sed 's/{"metadata":{"name":"/\n/g' | sed -n '2,$p')
ITEMS
  echo "[$groups]" > "$out/$job.json.new" && busybox mv -f "$out/$job.json.new" "$out/$job.json"
}

while :; do
  for spec in "$@"; do
    IFS=: read -r job namespace selector port <<SPEC
$spec
SPEC
    discover "$job" "$namespace" "$selector" "$port"
  done
  sleep "$interval" &
  wait $!
done
