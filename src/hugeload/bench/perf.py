"""TLB counters through perf_event_open, where the machine has them.

Generic events (PERF_TYPE_HW_CACHE: dTLB read accesses and misses) on every CPU that
offers them, plus the vendor's raw page-walk events where the CPU is known.  A VM
without a virtual PMU refuses hardware events (ENOENT/EOPNOTSUPP); then `open_counters`
returns None and `why_none` says so in one line.  Decoding is separate from the syscall
(`Counters(reader=...)`) so tests feed it fake read() results.
"""

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from typing import NamedTuple

PERF_TYPE_RAW, PERF_TYPE_HW_CACHE = 4, 3
CACHE_DTLB, OP_READ, RESULT_ACCESS, RESULT_MISS = 3, 0, 0, 1
READ_FORMAT = 1 | 2  # TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING: value, enabled, running
FLAG_DISABLED, FLAG_INHERIT, FLAG_EXCLUDE_KERNEL, FLAG_EXCLUDE_HV = 1 << 0, 1 << 1, 1 << 5, 1 << 6
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_RESET = 0x2400, 0x2401, 0x2403
SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def cache_config(cache: int, op: int, result: int) -> int:
    return cache | (op << 8) | (result << 16)


class Event(NamedTuple):
    name: str
    type: int
    config: int


GENERIC = [
    Event("dtlb_loads", PERF_TYPE_HW_CACHE, cache_config(CACHE_DTLB, OP_READ, RESULT_ACCESS)),
    Event("dtlb_load_misses", PERF_TYPE_HW_CACHE, cache_config(CACHE_DTLB, OP_READ, RESULT_MISS)),
]


def raw(event: int, umask: int, cmask: int = 0) -> int:
    return event | (umask << 8) | (cmask << 24)


# Walk events by vendor (the encodings of recent cores: Intel Skylake and later, AMD Zen 2 and
# later).  Unknown CPUs get the generic events only.
VENDOR = {
    "GenuineIntel": [
        Event("walks_completed", PERF_TYPE_RAW, raw(0x08, 0x0E)),  # DTLB_LOAD_MISSES.WALK_COMPLETED
        Event("walk_cycles", PERF_TYPE_RAW, raw(0x08, 0x10, 1)),
    ],  # DTLB_LOAD_MISSES.WALK_ACTIVE
    "AuthenticAMD": [Event("walks_completed", PERF_TYPE_RAW, raw(0x45, 0xF0))],  # LS_L1_D_TLB_MISS, L2 TLB misses
}


def events_for(vendor: str | None) -> list[Event]:
    return GENERIC + VENDOR.get(vendor or "", [])


def attr_bytes(ev: Event) -> bytes:
    """struct perf_event_attr (version 5 size, 112 bytes) counting user space only."""
    flags = FLAG_DISABLED | FLAG_INHERIT | FLAG_EXCLUDE_KERNEL | FLAG_EXCLUDE_HV
    head = struct.pack("=IIQQQQQ", ev.type, 112, ev.config, 0, 0, READ_FORMAT, flags)
    return head + bytes(112 - len(head))


def decode(data: bytes) -> int | None:
    """One read() of a counter with READ_FORMAT: the value scaled for multiplexing
    (value * enabled / running); None when the counter never ran."""
    if len(data) < 24:
        return None
    value, enabled, running = struct.unpack("=QQQ", data[:24])
    if not running:
        return None
    return value if running == enabled else int(value * enabled / running)


def summarize(values: dict[str, int | None]) -> dict:
    """Counts plus the dTLB hit rate (1 - misses / loads) when both are known."""
    out = {k: v for k, v in values.items()}
    loads, misses = values.get("dtlb_loads"), values.get("dtlb_load_misses")
    out["dtlb_hit_rate"] = (1 - misses / loads) if loads and misses is not None else None
    return out


class Counters:
    """Counters already opened (fds); `reader(fd) -> bytes` is os.read in real use."""

    def __init__(
        self,
        fds: dict[str, int],
        reader: Callable[[int], bytes] | None = None,
        ioctl: Callable[[int, int], None] | None = None,
    ):
        self.fds, self.reader = fds, reader or (lambda fd: os.read(fd, 24))
        self.ioctl = ioctl or _ioctl

    def start(self) -> None:
        for fd in self.fds.values():
            self.ioctl(fd, PERF_EVENT_IOC_RESET)
            self.ioctl(fd, PERF_EVENT_IOC_ENABLE)

    def stop(self) -> dict:
        for fd in self.fds.values():
            self.ioctl(fd, PERF_EVENT_IOC_DISABLE)
        return summarize({name: decode(self.reader(fd)) for name, fd in self.fds.items()})

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _ioctl(fd: int, request: int) -> None:
    import fcntl

    fcntl.ioctl(fd, request, 0)


_why = "not probed"


def why_none() -> str:
    return _why


def open_counters(pid: int = 0, vendor: str | None = None) -> Counters | None:
    """Open the events for `pid` (0: this process, inherited by threads started later).
    None when the machine offers no hardware events; why_none() says why."""
    global _why
    nr = SYS_PERF_EVENT_OPEN.get(os.uname().machine)
    if nr is None:
        _why = f"no perf_event_open number known for {os.uname().machine}"
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fds: dict[str, int] = {}
    for ev in events_for(vendor):
        buf = ctypes.create_string_buffer(attr_bytes(ev), 112)
        fd = libc.syscall(nr, buf, ctypes.c_int(pid), ctypes.c_int(-1), ctypes.c_int(-1), ctypes.c_ulong(0))
        if fd < 0:
            err = ctypes.get_errno()
            if ev in GENERIC:
                for f in fds.values():
                    os.close(f)
                _why = (
                    f"perf_event_open refused hardware events ({errno.errorcode.get(err, err)}): "
                    f"this machine (a VM without a virtual PMU?) has no TLB counters, so TLB misses are not counted"
                )
                return None
            continue  # a raw event this core lacks: keep the generic ones
        fds[ev.name] = fd
    _why = ""
    return Counters(fds)
