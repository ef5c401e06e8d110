#!/usr/bin/env bash
# Builds a local container image that boots systemd as PID 1 with hugeload installed the way
# a careful admin would: the system's python3, the package in /usr/local (root-owned), and
# hugeload-restore.service written by `hugeload boot-config --systemd --apply` and enabled.
# Made from files on this host with `podman import` (no registry): systemd and its units,
# python3 and its standard library, hugeload, rich and prometheus_client (the exporter unit),
# and every library ldd names for them.
#   scripts/systemd-image.sh                  # tag hugeload-systemd:local
#   scripts/systemd-image.sh --tag T
#   scripts/systemd-image.sh --tag T --remove
# Run it privileged (the pools are the host's /sys): tests/boot/test_systemd_unit.py does.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=hugeload-systemd:local
remove=0
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --remove) remove=1; shift ;;
    *) echo "systemd-image: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v podman >/dev/null || { echo "systemd-image: podman is not installed (apt-get install podman runc)" >&2; exit 1; }
if [ $remove = 1 ]; then
  podman image rm -f "$tag" >/dev/null 2>&1 || true
  exit 0
fi
py=/usr/bin/python3
[ -x /usr/lib/systemd/systemd ] || { echo "systemd-image: no /usr/lib/systemd/systemd on this host (apt-get install systemd)" >&2; exit 1; }
[ -x $py ] || { echo "systemd-image: no $py on this host" >&2; exit 1; }
pyver=$($py -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null) \
  || { echo "systemd-image: no .venv: run scripts/setup.sh first" >&2; exit 1; }
[ "$(.venv/bin/python -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')" = "$pyver" ] \
  || { echo "systemd-image: .venv is not python $pyver (its native library would not load)" >&2; exit 1; }
[ -f src/hugeload/libhugeload.so ] || { echo "systemd-image: no built library in src/hugeload: run scripts/setup.sh" >&2; exit 1; }

root=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$root" "$log"' EXIT
mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{etc,var/lib/hugeload/models,var/log,run,tmp,proc,sys,dev,root}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
chmod 1777 "$root/tmp"

copy() {  # files or directories at the same path in the image
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -a "$f" "$root$f"
  done
}
libs_of() {  # every library ldd resolves for the ELF files given
  for f in "$@"; do
    ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]+ \(/ {print $1}'
  done | sort -u
}
copy /usr/lib/systemd /usr/lib/x86_64-linux-gnu/systemd /usr/bin/systemctl /usr/bin/journalctl \
  "$py" "$(readlink -f $py)" "/usr/lib/python$pyver" /usr/lib/os-release /etc/passwd /etc/group
elves=$(find "$root/usr/lib/systemd" "$root/usr/lib/x86_64-linux-gnu/systemd" "$root/usr/lib/python$pyver/lib-dynload" \
  -type f \( -perm -u+x -o -name '*.so*' \) | sed "s|^$root||")
for so in $(libs_of $elves /usr/bin/systemctl /usr/bin/journalctl "$(readlink -f $py)" src/hugeload/*.so); do
  [ -e "$root$so" ] || { mkdir -p "$root$(dirname "$so")"; cp -L "$so" "$root$so"; }
done
# A clean systemd: the host's enabled units stay out, what the image boots is what it ships.
rm -rf "$root/usr/lib/systemd/system/multi-user.target.wants"/* "$root/usr/lib/systemd/system/getty.target.wants"
: > "$root/etc/machine-id"
echo hugeload-boot > "$root/etc/hostname"
ln -s ../usr/lib/os-release "$root/etc/os-release"
# hugeload and what it imports, where the system python finds packages root installed.
site="$root/usr/local/lib/python$pyver/dist-packages"
mkdir -p "$site"
cp -a src/hugeload "$site/"
for pkg in rich markdown_it mdurl pygments prometheus_client; do cp -a "$venv_site/$pkg" "$site/"; done
find "$site" -name __pycache__ -prune -exec rm -rf {} +
chown -R root:root "$root"
# The unit, written by hugeload itself for that interpreter and package, then enabled.
PYTHONPATH=$site $py -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from hugeload.cli import main; sys.exit(main(["boot-config", "--systemd", "--apply", "--target-root", sys.argv[2]]))' \
  "$site" "$root" >"$log" 2>&1 || { cat "$log" >&2; echo "systemd-image: boot-config --systemd failed" >&2; exit 1; }
systemctl --root="$root" enable hugeload-restore.service >"$log" 2>&1 \
  || { cat "$log" >&2; echo "systemd-image: systemctl enable failed" >&2; exit 1; }
tar -C "$root" -cf - . | podman import --change 'CMD ["/usr/lib/systemd/systemd"]' --change "STOPSIGNAL SIGRTMIN+3" - "$tag" >"$log" 2>&1 \
  || { cat "$log" >&2; echo "systemd-image: podman import failed" >&2; exit 1; }
echo "$tag"
