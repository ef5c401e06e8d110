"""`bench engine`'s runs summarised: per backing and test, the median over rounds with its
interval, the paired ratio against `default`, the best hugeload backing against the best
alternative, 1 GB against 2 MB pages, and NUMA placements against local (bench/stats.py says
what the intervals and "within noise" mean)."""

import os
import shlex
from dataclasses import dataclass, field

from hugeload.bench import stats
from hugeload.bench.backings import EngineBacking, Placement
from hugeload.bench.common import bar_charts
from hugeload.bench.verify import Verification
from hugeload.errors import HugeloadError

STARTUP = "startup_s"  # the start-up "test": seconds, lower is better
NOTE = (
    "times are wall-clock; nothing reads smaps while a timed run runs (page sizes come from one untimed "
    "verification run per backing and the preload library's report); intervals are bootstrap 95% intervals "
    "of the median over interleaved rounds, ratios are medians of per-round ratios"
)


@dataclass
class Run:
    """One timed run of one backing in one round."""

    backing: str
    round: int
    returncode: int
    wall_s: float
    startup_s: float | None
    rates: dict[str, float]  # test name -> tokens/s
    weights_kb: set[int] = field(default_factory=set)  # from the preload report
    munmap_failed: bool = False
    error: str | None = None
    tlb: dict = field(default_factory=dict)  # dTLB counts of the engine run, where counted


@dataclass
class Measured:
    """What a bench engine run produced, for summarize()."""

    chosen: list[EngineBacking]
    runs: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # backing -> why it was not timed
    verified: dict[str, Verification] = field(default_factory=dict)  # backing -> its verification run


def series(runs: list[Run], name: str, test: str) -> dict[int, float]:
    """A backing's figure for one test, by round (successful runs only)."""
    out = {}
    for r in runs:
        if r.backing == name and r.returncode == 0:
            v = r.startup_s if test == STARTUP else r.rates.get(test)
            if v is not None:
                out[r.round] = v
    return out


def tests_of(runs: list[Run]) -> list[str]:
    """The rates any successful run reported, then start-up when it was timed."""
    return sorted({t for r in runs if r.returncode == 0 for t in r.rates}) + (
        [STARTUP] if any(r.startup_s is not None for r in runs) else []
    )


def _ratio(runs: list[Run], name: str, base: str, test: str) -> dict:
    r = stats.paired_ratio(series(runs, name, test), series(runs, base, test))
    return r.as_dict() if r else dict(stats.NO_RATIO)


def _metric(runs: list[Run], name: str, base: str | None, test: str) -> dict | None:
    values = series(runs, name, test)
    if not values:
        return None
    out = stats.stat(list(values.values())).as_dict()
    out.update(_ratio(runs, name, base, test) if base else stats.NO_RATIO)
    return out


def paired_by_test(runs: list[Run], name: str, base: str, tests: list[str]) -> dict:
    """{test: paired ratio of `name` over `base` with its interval}, for the tests both ran."""
    out = {}
    for t in tests:
        r = stats.paired_ratio(series(runs, name, t), series(runs, base, t))
        if r:
            out[t] = r.as_dict()
    return out


def _entry(b: EngineBacking, runs: list[Run], v: Verification) -> dict:
    mine = [r for r in runs if r.backing == b.name]
    return {
        "backing": b.name,
        "kind": b.kind,
        "hugeload": b.hugeload,
        "status": "ok",
        "reason": None,
        "runs": len(mine),
        "failed_runs": sum(r.returncode != 0 for r in mine),
        "weights_page_kb": sorted(v.weights_kb),
        "alloc_page_kb": sorted(v.alloc_kb),
        "file_pmd_mapped_kb": v.file_pmd_kb,
        "thp_kb": v.thp_kb,
        "hugetlb_kb": v.hugetlb_kb,
        "vmpte_kb": v.vmpte_kb,
        "vmlck_kb": v.vmlck_kb,
        "pss_kb": v.pss_kb,
        "munmap_failed": any(r.munmap_failed for r in mine),
    }


def summarize(model: str, size: int, engine_argv: list[str], rounds: int, measured: Measured) -> dict:
    chosen, runs, skipped, verified = measured.chosen, measured.runs, measured.skipped, measured.verified
    results = []
    base_name = "default" if any(b.name == "default" for b in chosen) else None
    tests = tests_of(runs)
    for b in chosen:
        entry = _entry(b, runs, verified.get(b.name, Verification()))
        ok = [r for r in runs if r.backing == b.name and r.returncode == 0]
        if b.name in skipped:
            entry.update(status="skipped", reason=skipped[b.name])
        elif not ok:
            mine = [r for r in runs if r.backing == b.name]
            entry.update(status="failed", reason=mine[0].error if mine else "not run")
        else:
            base = base_name if base_name and b.name != base_name else None
            metrics = {t: m for t in tests if (m := _metric(runs, b.name, base, t)) is not None}
            tlb = [r.tlb for r in ok if r.tlb]
            if tlb:
                entry["tlb"] = stats.median_counts(tlb)
            if not any(t != STARTUP for t in metrics):
                entry.update(status="no rate", reason="the engine printed no tokens/s figure")
            entry["metrics"] = metrics
        results.append(entry)
    return {
        "model": model,
        "model_size": size,
        "command": shlex.join(engine_argv),
        "rounds": rounds,
        "results": results,
        "best": best_vs_best(results, runs, tests),
        "each_vs_best": each_vs_best(results, runs, tests),
        "gigantic_vs_huge": gigantic_vs_huge(results, runs, tests),
        **noise_gate(aa_checks(chosen, runs, tests)),
        "note": NOTE,
    }


def aa_checks(chosen: list[EngineBacking], runs: list[Run], tests: list[str]) -> dict:
    """Per A/A twin (a backing named twice, `default#2`): its paired ratio against the backing it
    repeats, per test both ran in at least two common rounds (one round gives no interval)."""
    out = {}
    for b in chosen:
        if not b.base:
            continue
        judged = {}
        for t, m in paired_by_test(runs, b.name, b.base, tests).items():
            if len(set(series(runs, b.name, t)) & set(series(runs, b.base, t))) >= 2:
                judged[t] = m
        out[b.name] = {"against": b.base, "tests": judged}
    return out


def noise_gate(aa: dict) -> dict:
    """The A/A verdict of a run: `noisy` True when any A/A interval excludes 1 (the run cannot tell
    a backing from itself, so no ratio of it can be read), False when every one includes 1, None
    when there is nothing to judge (no backing named twice, or the twin has no two rounds);
    `noisy_tests` names the failures as `default#2 vs default pp64: 0.711x (0.302-0.847)`."""
    failed = [
        f"{name} vs {c['against']} {t}: {m['ratio']:.3f}x ({m['ratio_low']:.3f}-{m['ratio_high']:.3f})"
        for name, c in aa.items()
        for t, m in c["tests"].items()
        if not m["within_noise"]
    ]
    judged = any(c["tests"] for c in aa.values())
    return {"aa": aa, "noisy": bool(failed) if judged else None, "noisy_tests": failed}


def gigantic_vs_huge(results: list[dict], runs: list[Run], tests: list[str]) -> dict:
    """1 GB against 2 MB pages, paired per round, for each pair of backings that differ
    only in page size (1g/2m, 1g+alloc/2m+alloc; > 1: 1 GB faster, start-up: slower)."""
    ok = {r["backing"] for r in results if r["status"] == "ok"}
    out = {}
    for big in sorted(ok):
        if "1g" not in big or "#" in big:
            continue
        small = big.replace("1g", "2m")
        if small in ok:
            out[f"{big} vs {small}"] = paired_by_test(runs, big, small, tests)
    return out


def best_vs_best(results: list[dict], runs: list[Run], tests: list[str]) -> dict:
    """Per test: hugeload's best backing against the best alternative (highest median
    tokens/s; lowest start-up), with the paired ratio (> 1: hugeload better)."""
    out = {}
    for t in tests:
        lower = t == STARTUP
        cands = [
            (r["backing"], r["hugeload"], r["metrics"][t]["median"])
            for r in results
            if r["status"] == "ok" and t in (r.get("metrics") or {})
        ]
        hl = [c for c in cands if c[1]]
        alt = [c for c in cands if not c[1] and "#" not in c[0]]
        if not hl or not alt:
            continue
        pick = min if lower else max
        h = pick(hl, key=lambda c: c[2])[0]
        a = pick(alt, key=lambda c: c[2])[0]
        out[t] = {"hugeload": h, "alternative": a, **(_ratio(runs, a, h, t) if lower else _ratio(runs, h, a, t))}
    return out


def each_vs_best(results: list[dict], runs: list[Run], tests: list[str]) -> dict:
    """Per test: every hugeload backing against the best alternative (the promise is that none is
    slower), paired per round (> 1: hugeload better; start-up inverted to match), and `slower`:
    the backings whose interval lies wholly below 1."""
    out = {}
    for t, b in best_vs_best(results, runs, tests).items():
        a, lower = b["alternative"], t == STARTUP
        each = {
            r["backing"]: _ratio(runs, a, r["backing"], t) if lower else _ratio(runs, r["backing"], a, t)
            for r in results
            if r["status"] == "ok" and r["hugeload"] and t in (r.get("metrics") or {})
        }
        slower = [h for h, m in each.items() if m.get("ratio_high") is not None and m["ratio_high"] < 1]
        out[t] = {"alternative": a, "backings": each, "slower": slower}
    return out


def placement_ratios(chosen: list[EngineBacking], runs: list[Run], tests: list[str]) -> dict:
    """Per staged backing placed elsewhere than local: its paired ratio against the same
    backing @local, per test (> 1: faster than local; start-up: > 1 is slower)."""
    out = {}
    names = {b.name for b in chosen}
    for b in chosen:
        if not b.placement or b.placement is Placement.LOCAL or b.base:
            continue
        local = b.name.replace(f"@{b.placement.value}", f"@{Placement.LOCAL.value}")
        if local in names:
            out[b.name] = {"against": local, "tests": paired_by_test(runs, b.name, local, tests)}
    return out


def plot(data: dict, path: str) -> None:
    """One bar chart per test (tokens/s, and start-up seconds) across the backings that counted."""
    panels_by_test: dict[str, list] = {}
    for r in data["results"]:
        for test, m in (r.get("metrics") or {}).items():
            panels_by_test.setdefault(test, []).append((r["backing"], m["median"], m["low"], m["high"]))
    panels = [
        ("start-up, s (lower is better)" if t == STARTUP else f"{t}, tokens/s (higher is better)", bars)
        for t, bars in panels_by_test.items()
    ]
    if not panels:
        raise HugeloadError("nothing to plot: no backing produced figures")
    bar_charts(
        panels,
        f"hugeload bench engine: {os.path.basename(data['model'])}, median of {data['rounds']} rounds, "
        f"95% intervals" + (" (VM)" if data.get("hypervisor") else ""),
        path,
    )
