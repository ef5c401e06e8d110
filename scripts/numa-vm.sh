#!/usr/bin/env bash
# Runs COMMAND inside a two-node NUMA Linux guest that shares this machine's
# filesystem, with the checkout at the same path; exits with COMMAND's status.
#   scripts/numa-vm.sh                      # the NUMA tests (pytest tests/numa)
#   scripts/numa-vm.sh numactl -H           # anything else
# The guest: 2 CPUs, 4 GB, node 0 = CPU 0 + 2 GB, node 1 = CPU 1 + 2 GB, one 1 GB
# page on node 1 from its command line (a runtime 1 GB reservation reads back 0
# there). Software emulation (TCG): the KVM of the development VM is a nested
# hypervisor that hangs stock kernels. Boot takes 20-60 s; timings inside mean
# nothing. The guest's root is the host's, read-only; /tmp is the guest's own
# and $HUGELOAD_NUMA_OUT (default .cache/numa-vm) is shared and writable.
#
# Needs root, qemu-system-x86, a kernel image in /boot and virtme-ng; installs
# what is missing when it can (apt-get, pip into .cache/vng-venv).
# Exit 77 (with one line saying why) when the rig cannot be set up.
# HUGELOAD_VM_APPEND replaces the guest kernel's extra command line (default: one 1 GB page
# on node 1), e.g. the seed's GRUB line for tests/boot/test_boot_guest.py.
# Only one guest at a time: a second caller waits on the lock.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=${HUGELOAD_NUMA_OUT:-$repo/.cache/numa-vm}
timeout_s=${HUGELOAD_NUMA_TIMEOUT:-900}
skip() { echo "numa-vm: skipped: $*" >&2; exit 77; }

[[ $(uname -m) == x86_64 ]] || skip "not an x86_64 host"
[[ $(id -u) == 0 ]] || skip "needs root (qemu, and the guest's tests reserve pages)"

if ! command -v qemu-system-x86_64 >/dev/null || ! compgen -G "/boot/vmlinuz-*" >/dev/null || ! command -v busybox >/dev/null; then
  command -v apt-get >/dev/null || skip "qemu-system-x86_64 or a /boot/vmlinuz-* kernel is missing and there is no apt-get"
  echo "numa-vm: installing qemu-system-x86, linux-image-amd64, busybox-static" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 linux-image-amd64 busybox-static; } >&2 \
    || skip "apt-get could not install qemu-system-x86 linux-image-amd64 busybox-static"
fi
kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[[ -n $kernel ]] || skip "no kernel image in /boot"

vng_venv=$repo/.cache/vng-venv
if ! command -v vng >/dev/null; then
  if [[ ! -x $vng_venv/bin/vng ]]; then
    echo "numa-vm: installing virtme-ng into $vng_venv" >&2
    { python3 -m venv "$vng_venv" && "$vng_venv/bin/pip" install -q virtme-ng; } >&2 || skip "pip could not install virtme-ng"
  fi
  export PATH=$vng_venv/bin:$PATH
fi

mkdir -p "$out"
if [[ $# -eq 0 ]]; then
  py=$repo/.venv/bin/python
  [[ -x $py ]] || skip "no .venv: run scripts/setup.sh first"
  set -- "$py" -m pytest -p no:cacheprovider -q tests/numa
fi

# The command goes through a file so its quoting and environment survive the
# kernel command line. HUGELOAD_NUMA_GUEST tells tests they run in the rig.
guest=$out/guest.sh
{
  echo '#!/bin/bash'
  echo "cd $(printf %q "$repo") || exit 125"
  echo 'export HUGELOAD_NUMA_GUEST=1 PYTHONDONTWRITEBYTECODE=1'
  echo "export HUGELOAD_NUMA_OUT=$(printf %q "$out")"
  # The guest starts with clean pools except the boot-time 1 GB page on node 1.
  printf '%q ' "$@"
  echo
  echo 'rc=$?'
  echo "echo \$rc > $(printf %q "$out/rc")"
  echo 'exit $rc'
} > "$guest"
chmod +x "$guest"
rm -f "$out/rc"

# Opened without truncating (9<>, not 9>) and never through a symlink planted in /tmp.
lock=/tmp/hugeload-numa-vm.lock
[[ -L $lock ]] && { echo "numa-vm: $lock is a symlink: remove it (someone planted it)" >&2; exit 1; }
exec 9<>"$lock"
flock 9
set +e
# Through a pipe: given a regular file as its output, qemu opens it again with O_TRUNC, and
# `scripts/test.sh > log` lost everything the suite printed before the guest started.
timeout --kill-after=10 "$timeout_s" vng --disable-kvm --run "$kernel" --cpus 2 --memory 4G \
  --numa 2G,cpus=0 --numa 2G,cpus=1 \
  --append "${HUGELOAD_VM_APPEND:-hugepagesz=1G hugepages=1:1}" \
  --rwdir "$out" --cwd "$repo" -e "$guest" </dev/null 2>&1 | cat
vm_rc=${PIPESTATUS[0]}
set -e
if [[ -s $out/rc ]]; then
  exit "$(cat "$out/rc")"
fi
echo "numa-vm: the guest did not report an exit status (vng exited $vm_rc${timeout_s:+, limit ${timeout_s}s})" >&2
exit $(( vm_rc == 0 ? 1 : vm_rc ))
