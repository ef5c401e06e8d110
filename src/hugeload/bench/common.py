"""What every benchmark shares besides statistics (stats.py), reservations (reservations.py) and
verification (verify.py): the native loops, the memory available, the notes every result
carries (times are measured; VMs hide the gain of 1 GB pages), and the plots."""

import ctypes

from hugeload import native
from hugeload.errors import HugeloadError, UsageError
from hugeload.probe import cpu as probe_cpu
from hugeload.probe.memory import read_meminfo
from hugeload.units import KiB

VM_NOTE = (
    "running under a hypervisor: a guest's TLB entries are no larger than the host's backing pages, "
    "so 1G guest pages measure about the same as 2M unless the host backs this VM with 1G pages"
)


def native_loops() -> ctypes.CDLL:
    """The native library; its benchmark loops' signatures are declared by native.load()."""
    return native.load()


def mem_available(root="/") -> int | None:
    """MemAvailable in bytes, or None."""
    kb = read_meminfo(root).get("MemAvailable")
    return kb * KiB if kb else None


# --------------------------------------------------------------------------- notes


def measured_note(root="/", how: str = "wall-clock", tlb: bool = True) -> str:
    counters = (
        "this machine exposes no CPU performance counters"
        if not probe_cpu.has_pmu(root)
        else "CPU performance counters are not read"
    )
    if not tlb:
        return f"times are measured ({how}); {counters}"
    return f"times are measured ({how}), not TLB misses: {counters}, so TLB misses are inferred, not counted"


def on_hypervisor(root="/") -> bool:
    try:
        return probe_cpu.read_cpu(root).hypervisor
    except Exception:  # a note, never a failure
        return False


def envelope(root, how: str, pages, tlb: bool = True) -> dict:
    """The fields every memory bench's result ends with: how it was measured, whether this is a
    VM (and what that hides), and the reservations (bench/reservations.PageReservations)."""
    hypervisor = on_hypervisor(root)
    return {
        "note": measured_note(root, how, tlb),
        "hypervisor": hypervisor,
        "vm_note": VM_NOTE if hypervisor else None,
        "reservations": pages.reservations,
        "pools_restored": pages.restored,
    }


def cpu_vendor(root="/") -> str | None:
    """The CPU vendor, for the raw TLB events (perf.open_counters); None when unknown."""
    try:
        return probe_cpu.read_cpu(root).vendor
    except Exception:  # only picks the raw events
        return None


# --------------------------------------------------------------------------- plots


def check_plot_available() -> None:
    """UsageError (one line) when matplotlib is missing; call before a long run."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'hugeload[plot]'") from None


def bar_charts(panels: list[tuple[str, list[tuple[str, float, float, float]]]], title: str, path: str) -> None:
    """One bar chart per panel, (label, [(name, median, low, high), ...]), intervals as error bars."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (label, bars) in zip(axes[0], panels, strict=True):
        med = [b[1] for b in bars]
        err = [[m - b[2] for m, b in zip(med, bars, strict=True)], [b[3] - m for m, b in zip(med, bars, strict=True)]]
        ax.bar([b[0] for b in bars], med, yerr=err, capsize=4, color="#4c72b0")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise HugeloadError(f"cannot write plot {path}: {e.strerror}") from None
    finally:
        plt.close(fig)
