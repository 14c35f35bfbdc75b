#!/usr/bin/env bash
# Builds the compose stack's image locally: nothing can be pulled on this machine kind.
#
#   deploy/compose/images.sh [--bin-dir DIR] [--docker-host unix:///PATH]
#   deploy/compose/images.sh [--bin-dir DIR] --archive FILE
#
# One image holds every binary of the stack: chaos-ebpf and chaos-lab-node (from
# --bin-dir, default target/release), etcd, etcdctl, prometheus and promtool (Debian
# packages), busybox-static as the shell, and the shared libraries `ldd` names for
# them. One image rather than one per service: the binaries share their libraries, and
# one import is one step of the stack's start.
#
# Reproducible: the rootfs is packed with sorted names, owner 0:0 and mtime 0, after
# the debug sections of the project's binaries are stripped, so the same binaries give
# the same tar, whose sha256 is the tag (chaos-ebpf-stack:<first 16 hex>). An image
# with that tag already present is not imported again. No `latest` tag.
#
# --archive FILE: no Docker daemon is used; FILE becomes a docker-archive tar
# (manifest.json, config.json, the same rootfs as its one layer) that a Kubernetes
# node's containerd imports (`ctr -n k8s.io images import FILE`), tagged
# localhost/chaos-ebpf-stack:<the same 16 hex> and localhost/chaos-ebpf:<the workspace
# version in Cargo.toml>, the image of the Helm chart deploy/helm/chaos-lab. It has no
# Cmd: each pod names its command.
#
# Prints the image name(s) on stdout (progress on stderr); exit 2 on a missing input.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin_dir="$repo/target/release"
docker_host="${DOCKER_HOST:-unix:///var/run/docker.sock}"
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --docker-host) docker_host="${2:?--docker-host needs unix:///PATH}"; shift 2 ;;
    --archive) archive="${2:?--archive needs a file name}"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

need() {
  [ -x "$1" ] || { echo "images.sh: $1 is missing: $2" >&2; exit 2; }
}
need "$bin_dir/chaos-ebpf" "build it (cargo build --release -p chaos-cli), or pass --bin-dir"
need "$bin_dir/chaos-lab-node" "build it (cargo build --release -p chaos-lab --bin chaos-lab-node), or pass --bin-dir"
for tool in /usr/bin/etcd /usr/bin/etcdctl; do need "$tool" "apt-get install etcd-server etcd-client"; done
for tool in /usr/bin/prometheus /usr/bin/promtool; do need "$tool" "apt-get install prometheus"; done
need /bin/busybox "apt-get install busybox-static"
command -v objcopy >/dev/null || { echo "images.sh: objcopy is missing: apt-get install binutils" >&2; exit 2; }

work="$(mktemp -d /tmp/chaos-stack-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,usr/local/bin,usr/bin,etc,tmp,journal,runs,var/lib/etcd,prometheus,run/chaos-ebpf}
chmod 1777 "$rootfs/tmp"

# The project's binaries without their debug sections (a debug build's are most of it).
for b in chaos-ebpf chaos-lab-node; do
  objcopy --strip-debug "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
done
for tool in etcd etcdctl prometheus promtool; do
  cp "/usr/bin/$tool" "$rootfs/usr/bin/$tool"
done
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh ash cat ls sleep wget hostname grep sed tar mkdir rm echo test kill ps env date head tail wc; do
  ln -s busybox "$rootfs/bin/$applet"
done

# Every library a binary needs, at the path the loader looks for it.
for b in "$rootfs"/usr/local/bin/* "$rootfs"/usr/bin/*; do
  ldd "$b" 2>/dev/null | grep -oE '/[^ ]+' || true
done | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done

cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
# Names through Docker's DNS (glibc >= 2.34 has files and dns inside libc).
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
  -C "$rootfs" -cf "$work/rootfs.tar" .
digest="$(sha256sum "$work/rootfs.tar" | cut -c1-16)"
image="chaos-ebpf-stack:$digest"
if [ -n "$archive" ]; then
  # The chart's tag is the workspace's version, read from Cargo.toml.
  version="$(awk '/^\[/ { section = $0 } section == "[workspace.package]" && $1 == "version" {
    gsub(/"/, "", $3); print $3; exit }' "$repo/Cargo.toml")"
  [ -n "$version" ] || { echo "images.sh: no version under [workspace.package] in $repo/Cargo.toml" >&2; exit 2; }
  names=("localhost/$image" "localhost/chaos-ebpf:$version")
  mv "$work/rootfs.tar" "$work/layer.tar"
  diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
  # No "created" field and the same mtime for every member: the same binaries give the
  # same archive.
  cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Labels":{"org.opencontainers.image.title":"chaos-ebpf-stack","org.opencontainers.image.version":"$version"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
JSON
  printf '[{"Config":"config.json","RepoTags":["%s","%s"],"Layers":["layer.tar"]}]\n' "${names[@]}" > "$work/manifest.json"
  tar --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu \
    -C "$work" -cf "$archive.partial" manifest.json config.json layer.tar
  mv "$archive.partial" "$archive"
  echo "images.sh: wrote $archive ($(du -m "$archive" | cut -f1) MB)" >&2
  printf '%s\n' "${names[@]}"
  exit 0
fi
if docker -H "$docker_host" image inspect "$image" >/dev/null 2>&1; then
  echo "images.sh: $image is there already" >&2
else
  size="$(du -m "$work/rootfs.tar" | cut -f1)"
  echo "images.sh: importing $image (${size} MB)" >&2
  docker -H "$docker_host" import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'LABEL org.opencontainers.image.title=chaos-ebpf-stack' \
    "$work/rootfs.tar" "$image" >/dev/null
fi
echo "$image"
