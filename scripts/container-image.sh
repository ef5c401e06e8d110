#!/usr/bin/env bash
# Builds a local container image with llama.cpp's binaries and hugeload's preload library,
# from files on this host (no registry is needed): a rootfs of the binaries and the shared
# libraries ldd says they load, imported with `podman import`.
#   scripts/container-image.sh                 # tag llama-server-hugeload:local
#   scripts/container-image.sh --tag T --llama-bin DIR
#   scripts/container-image.sh --remove        # remove the image
# The library is also bind-mounted by `hugeload container-args`, so a rebuilt library does
# not need a new image; the copy inside is for running the image by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=llama-server-hugeload:local
bin=${HUGELOAD_LLAMA_BIN:-.cache/llama/bin}
remove=0
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --llama-bin) bin=$2; shift 2 ;;
    --remove) remove=1; shift ;;
    *) echo "container-image: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  # On demand, as scripts/setup.sh does for the build tools: root with apt-get installs it.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ $remove = 0 ]; then
    echo "container-image: installing podman runc with apt-get" >&2
    aptlog=$(mktemp)  # a fixed name in /tmp could be a link planted to a file root would overwrite
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc; } >"$aptlog" 2>&1 \
      || { tail -3 "$aptlog" >&2; rm -f "$aptlog"; echo "container-image: apt-get install podman runc failed" >&2; exit 1; }
    rm -f "$aptlog"
  elif ! command -v podman >/dev/null; then
    echo "container-image: podman is not installed (apt-get install podman runc)" >&2; exit 1
  fi
fi
if [ $remove = 1 ]; then
  podman image rm -f "$tag" >/dev/null 2>&1 || true
  exit 0
fi
lib=src/hugeload/libhugeload.so
[ -f "$lib" ] || lib=$(.venv/bin/python -c 'import hugeload.native as n; print(n.library_path())' 2>/dev/null || true)
[ -f "$lib" ] || { echo "container-image: no libhugeload.so: run scripts/setup.sh first" >&2; exit 1; }
tools=()
for t in llama-server llama-cli llama-bench llama-completion; do
  [ -x "$bin/$t" ] && tools+=("$bin/$t")
done
[ ${#tools[@]} -gt 0 ] || { echo "container-image: no llama.cpp binaries in $bin: run scripts/get-llama.sh" >&2; exit 1; }

root=$(mktemp -d)
log=$(mktemp)  # not "$root.log": a name others can guess from the directory's
trap 'rm -rf "$root" "$log"' EXIT
mkdir -p "$root"/{usr/local/bin,opt/hugeload,models/hugeload,tmp,run,etc,dev,proc,sys}
chmod 1777 "$root/tmp"
copy_with_libs() {  # the file, and every library ldd resolves for it, at the same path
  local f=$1 dest=$2
  cp -L "$f" "$root$dest"
  ldd "$f" | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}' | while read -r so; do
    mkdir -p "$root$(dirname "$so")"
    [ -e "$root$so" ] || cp -L "$so" "$root$so"
  done
}
for t in "${tools[@]}"; do copy_with_libs "$t" "/usr/local/bin/$(basename "$t")"; done
copy_with_libs "$lib" /opt/hugeload/libhugeload.so
# The dynamic loader's canonical path (binaries name /lib64/ld-linux-x86-64.so.2).
[ -d /lib64 ] && [ ! -e "$root/lib64" ] && mkdir -p "$root/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/" 2>/dev/null || true
echo "root:x:0:0:root:/:/usr/local/bin/llama-server" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
tar -C "$root" -cf - . | podman import --change "ENV PATH=/usr/local/bin" --change "WORKDIR /" - "$tag" >"$log" 2>&1 \
  || { cat "$log" >&2; echo "container-image: podman import failed" >&2; exit 1; }
echo "$tag"
