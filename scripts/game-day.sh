#!/usr/bin/env bash
# The README's main job: set everything up on a fresh Debian 12 machine (as root), bring
# up a 3-member etcd lab with its workload and Prometheus, run the game day
# (scenarios/etcd-game-day.yaml), print the report's summary and the bundle's path, and
# tear the lab down (also when the run fails or is interrupted).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
cargo build --release
# The scenario's probes call `chaos-ebpf lab verify`: the binaries just built come first.
export PATH="$PWD/target/release:$PATH"

chaos-ebpf lab up --nodes 3
trap 'chaos-ebpf lab down' EXIT
run_dir="chaos-runs/game-day-$(date -u +%Y%m%dT%H%M%SZ)"
status=0
chaos-ebpf run scenarios/etcd-game-day.yaml --run-dir "$run_dir" || status=$?
echo
echo "== report summary ($run_dir/report.md) =="
sed -n '1,/^## Hypothesis/p' "$run_dir/report.md" | head -n 40 || true
echo
echo "bundle: $run_dir.tar.gz"
echo "replay it later on a lab of the same shape: sudo chaos-ebpf replay $run_dir.tar.gz"
exit "$status"
