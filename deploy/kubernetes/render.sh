#!/usr/bin/env bash
# Renders deploy/kubernetes/lab.yaml, the plain manifests of the lab workload (the Helm
# chart deploy/helm/chaos-lab with its defaults, namespace chaos-lab, with the Namespace
# object), for `kubectl apply -f` without Helm:
#
#   deploy/kubernetes/render.sh            # writes deploy/kubernetes/lab.yaml
#   deploy/kubernetes/render.sh --check    # exit 1 when lab.yaml is not what the chart renders
#
# Needs helm (v3 or v4). xtask/tests/lab_chart.rs checks that lab.yaml is fresh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/lab.yaml"
command -v helm >/dev/null || { echo "render.sh: helm is missing (docs/kubernetes.md)" >&2; exit 2; }
rendered="$({
  echo "# The lab workload on Kubernetes: rendered from deploy/helm/chaos-lab by"
  echo "# deploy/kubernetes/render.sh (helm template chaos-lab --namespace chaos-lab"
  echo "# --set createNamespace=true). Do not edit: change the chart and render again."
  # helm logs that files/alerts.yml is a link (to deploy/compose/prometheus/alerts.yml).
  helm template chaos-lab "$here/../helm/chaos-lab" --namespace chaos-lab --set createNamespace=true 2>/dev/null
})"
case "${1:-}" in
  --check)
    if [ "$rendered" != "$(cat "$out" 2>/dev/null)" ]; then
      echo "render.sh: $out is stale: run deploy/kubernetes/render.sh" >&2
      exit 1
    fi ;;
  "") printf '%s\n' "$rendered" > "$out"; echo "render.sh: wrote $out" >&2 ;;
  *) echo "render.sh: unknown argument '$1' (--check or nothing)" >&2; exit 2 ;;
esac
