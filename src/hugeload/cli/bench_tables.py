"""The tables and notes `hugeload bench ...` prints, one function per benchmark, from the data
its `run()` returned (the same data `--json` prints).  "~" and "within noise" mean what
hugeload.bench.stats says, everywhere."""

import os

from hugeload import pages
from hugeload.bench.common import VM_NOTE
from hugeload.cli import render

NOISE = "~ = within noise: the 95% interval of the paired per-round ratio includes 1"


def _say(line: str) -> None:
    render.console.print(line)


def _fmt(v, digits: int = 2) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _ci(s, digits: int) -> str:
    """A Stat as `median [low-high]`."""
    return f"{s.median:.{digits}f} [{s.low:.{digits}f}-{s.high:.{digits}f}]"


def _interval(m: dict, digits: int = 1) -> str:
    """A stat dict as `median (low-high)`."""
    return f"{m['median']:.{digits}f} ({m['low']:.{digits}f}-{m['high']:.{digits}f})"


def _ratio_text(m: dict, noise: str = " ~ within noise") -> str:
    """A paired ratio dict as `1.050x (1.010-1.090)`, marked when within noise."""
    if m.get("ratio") is None:
        return "no common rounds"
    return f"{m['ratio']:.3f}x ({m['ratio_low']:.3f}-{m['ratio_high']:.3f}){noise if m['within_noise'] else ''}"


def _what(test: str) -> str:
    return "start-up" if test == "startup_s" else test


def _pages(kbs) -> str:
    return "/".join(pages.name(k) for k in kbs) or "-"


def _pools_footer(data: dict) -> None:
    """What a failure to put the pools back looks like, for every bench that reserves."""
    if not data["pools_restored"]:
        bad = [f"{pages.name(r.page_size_kb)} (was {r.before})" for r in data["reservations"] if not r.restored]
        render.err_console.print(f"[red]pools not back at their counts: {', '.join(bad)}[/]")


def _vm(data: dict) -> None:
    if data.get("hypervisor"):
        _say(f"Note: {VM_NOTE}.")


def _counters(who: str, c: dict) -> str:
    rate = f", dTLB hit rate {c['dtlb_hit_rate']:.4%}" if c.get("dtlb_hit_rate") is not None else ""
    return f"{who}: " + ", ".join(f"{k} {v}" for k, v in c.items() if k != "dtlb_hit_rate") + rate


# --------------------------------------------------------------------------- memory benches


def tensors(data: dict) -> None:
    rows, notes = [], []
    for r in data["results"]:
        if r.status != "ok":
            notes.append(f"{r.backing.upper()} skipped: {r.reason}")
            continue
        ratio_ci = "" if r.ratio is None else f"{r.ratio_low:.3f}-{r.ratio_high:.3f}"
        rows.append(
            [
                r.backing.upper(),
                pages.name(r.page_size_kb),
                _fmt(r.median_ms),
                f"{_fmt(r.ci_low_ms)}-{_fmt(r.ci_high_ms)}",
                _fmt(r.ratio, 3),
                ratio_ci,
            ]
        )
    n_rows, n_cols = data["shape"]
    pct = int(data["confidence"] * 100)
    title = (
        f"y = W @ x, W {n_rows}x{n_cols} float32 ({data['size'] >> 20} MiB), "
        f"{data['rounds']} rounds x {data['reps']} products"
    )
    _say(render.table(title, ["backing", "pages", "median ms", f"{pct}% CI", "vs 4K", f"{pct}% CI"], rows))
    for line in notes:
        _say(line)
    _say(f"Pages as verified in /proc/self/smaps. Note: {data['note']}.")
    _vm(data)
    _pools_footer(data)


def tlb(data: dict, plot: str | None = None) -> None:
    pct = int(data["confidence"] * 100)
    rows, ratio_rows, notes = [], [], []
    for r in data["results"]:
        name = r.backing.upper()
        if r.status != "ok":
            notes.append(f"{name} skipped: {r.reason}")
            continue
        page = pages.name(r.page_size_kb) + (f" ({r.huge_fraction:.0%})" if r.backing == "thp" else "")
        rows.append([name, page, f"{r.fill_ms:.0f}", _ci(r.random_ns, 1), _ci(r.seq_gbps, 2)])
        cells = {}
        for q in r.ratios:
            cells[(q.metric, q.against)] = f"{q.speedup:.2f}x [{q.low:.2f}-{q.high:.2f}]" + (
                "~" if q.within_noise else ""
            )
        if cells:
            ratio_rows.append([name] + [cells.get((m, a), "") for m in ("random_ns", "seq_gbps") for a in ("4k", "2m")])
    title = (
        f"Reads over {data['size'] >> 20} MiB per backing, median of {data['rounds']} interleaved rounds "
        f"({data['accesses']} dependent reads; {data['seq_passes']} sequential pass(es), best of)"
    )
    columns = ["backing", "pages (smaps)", "fill ms", f"random ns/access [{pct}% CI]", f"seq GB/s [{pct}% CI]"]
    _say(render.table(title, columns, rows))
    if ratio_rows:
        _say(
            render.table(
                f"Speedup (> 1: faster), median of per-round ratios [{pct}% CI]; {NOISE}",
                ["backing", "random vs 4K", "random vs 2M", "seq vs 4K", "seq vs 2M"],
                ratio_rows,
            )
        )
    for line in notes:
        _say(line)
    for b, c in data["tlb_counters"].items():
        _say(_counters(f"{b.upper()} TLB counters per random measurement", c))
    if data["tlb_note"]:
        _say(f"TLB counters: {data['tlb_note']}.")
    _say("fill = first touch of every page (faults and zeroing), timed once, not in the reads.")
    _say(f"Pages as verified in /proc/self/smaps. Note: {data['note']}.")
    _vm(data)
    if plot:
        _say(f"plot written to {plot}")
    _pools_footer(data)


def stage(data: dict) -> None:
    pct = int(data["confidence"] * 100)
    what = {"cold": "load, cold cache", "warm": "load, warm cache", "memcpy": "memcpy (1 thread)"}
    rows = []
    for r in data["results"]:
        res = "" if not r.resident_before else f"{max(x or 0 for x in r.resident_before):.0%}"
        ratio = (
            "" if r.vs_memcpy is None else f"{r.vs_memcpy.median:.2f}x [{r.vs_memcpy.low:.2f}-{r.vs_memcpy.high:.2f}]"
        )
        rows.append([what[r.case], _ci(r.gbps, 2), ratio, res])
    title = (
        f"Staging {data['size'] >> 20} MiB into {pages.name(data['page_size_kb'])} pages "
        f"(hugeload load, file on {data['filesystem']}), median of {data['rounds']} interleaved rounds"
    )
    _say(render.table(title, ["case", f"GB/s [{pct}% CI]", "vs memcpy", "cached before"], rows))
    _say(f"page size: {data['page_size_reason']}.")
    for line in data["notes"]:
        _say(f"Note: {line}.")
    _say(f"Note: {data['note']}.")
    _vm(data)
    if not data["cleaned"]:
        render.err_console.print("[red]a temporary hugetlbfs mount or file could not be removed[/]")
    _pools_footer(data)


# --------------------------------------------------------------------------- engine


def _engine_rows(data: dict) -> tuple[list[list], list[str]]:
    rows, notes = [], []
    for r in data["results"]:
        if r["status"] != "ok":
            notes.append(f"{r['backing']}: {r['status']}: {r['reason']}")
            if r["status"] in ("skipped", "failed"):
                continue
        weights = _pages(r["weights_page_kb"]) if r["weights_page_kb"] else "heap"
        if r.get("file_pmd_mapped_kb"):
            weights += f" ({r['file_pmd_mapped_kb'] >> 10} MiB in 2M PMDs)"
        heap = _pages(r["alloc_page_kb"])
        if r.get("thp_kb"):
            heap += f" ({r['thp_kb'] >> 10} MiB THP)"
        for test, m in (r.get("metrics") or {}).items():
            unit = "s" if test == "startup_s" else "t/s"
            share = f"{m['bandwidth_share']:.0%}" if m.get("bandwidth_share") is not None else ""
            ratio = "1 (baseline)" if m.get("ratio") is None else _ratio_text(m, " ~")
            interval = f"{_interval(m, 2 if unit == 's' else 1)} {unit}"
            rows.append([r["backing"], weights, heap, _what(test), interval, ratio, share])
        if r["failed_runs"]:
            notes.append(f"{r['backing']}: {r['failed_runs']} run(s) failed and are not counted")
        if r.get("munmap_failed"):
            notes.append(f"{r['backing']}: the engine printed 'munmap failed'")
    return rows, notes


def noise_line(data: dict) -> str | None:
    """One line on the A/A verdict (bench/summary.noise_gate): the run was too noisy to read,
    or the A/A check could not be judged; None when it passed or there was none."""
    if data.get("noisy"):
        return (
            f"[bold red]TOO NOISY TO READ[/]: the A/A check could not tell a backing from itself "
            f"({'; '.join(data['noisy_tests'])}), so no ratio here means anything; rerun on a quiet machine."
        )
    if data.get("noisy") is None and data.get("aa"):
        return "A/A check not judged: its twin needs at least two successful rounds."
    return None


def _engine_limits(data: dict) -> None:
    bw = data.get("bandwidth_gbps")
    if bw:
        line = f"read bandwidth at {data['threads']} thread(s): {_interval(bw, 1)} GB/s"
        if data.get("bytes_per_token"):
            limit = data.get("tg_limit_tps")
            line += f"; weights read per token {data['bytes_per_token'] / 2**20:.0f} MiB ({data['weights_read']})"
            line += f" -> limit {limit:.1f} t/s" if limit else ""
        _say(line)
    mem = [
        f"{r['backing']} {r['hugetlb_kb'] >> 10}/{r['vmlck_kb'] >> 10}/{r['pss_kb'] >> 10}"
        for r in data["results"]
        if r["status"] != "skipped"
    ]
    if mem:
        _say("memory (HugetlbPages/VmLck/Pss MiB, verification run): " + ", ".join(mem))
    for k, s in (data.get("setup_s") or {}).items():
        _say(f"setup {k} (not in start-up): {_interval(s, 2)} s over {len(s['values'])} time(s)")
    _say(f"copies held: {data['copies_held']}")
    for r in data["results"]:
        if r.get("tlb"):
            _say(_counters(f"{r['backing']} TLB counters (median run)", r["tlb"]))


def _engine_numa(numa: dict) -> None:
    _say(
        f"every run bound to node {numa['engine_node']} (CPUs {','.join(map(str, numa['cpus']))}); "
        + "; ".join(f"{p}: {d}" for p, d in numa["placements"].items())
    )
    for b, nodes in numa.get("copy_nodes", {}).items():
        _say(f"{b}: pages per node (numa_maps, when staged): " + ", ".join(f"node {n} {c}" for n, c in nodes.items()))
    for b, pr in numa.get("placement_ratios", {}).items():
        for t, m in pr["tests"].items():
            _say(f"{b} vs {pr['against']}, {_what(t)}: {_ratio_text(m, ' ~')}")
    _say(f"NUMA: {numa['note']}.")


def engine(data: dict) -> None:
    rows, notes = _engine_rows(data)
    title = (
        f"{data['command']}  on {os.path.basename(data['model'])} ({data['model_size'] >> 20} MiB), "
        f"{data['rounds']} interleaved rounds"
    )
    if data.get("noisy"):
        title = f"TOO NOISY TO READ (A/A check failed): {title}"
    columns = ["backing", "weights", "heap (large allocs)", "test", "median (95% CI)", "x default, paired (CI)"]
    _say(render.table(title, [*columns, "of bw limit"], rows))
    line = noise_line(data)
    if line:
        render.console.print(line, soft_wrap=True)  # one line, however long, for scripts that grep it
    for t, b in data["best"].items():
        _say(
            f"best hugeload vs best alternative, {_what(t)}: {b['hugeload']} vs {b['alternative']} "
            f"{_ratio_text(b)} (> 1: hugeload better)"
        )
    for t, e in data.get("each_vs_best", {}).items():
        each = ", ".join(f"{h} {_ratio_text(m, ' ~')}" for h, m in e["backings"].items())
        verdict = f"SLOWER: {', '.join(e['slower'])}" if e["slower"] else "none slower"
        _say(f"each hugeload backing vs {e['alternative']} (best alternative), {_what(t)}: {each}: {verdict}")
    for pair, per in data.get("gigantic_vs_huge", {}).items():
        for t, m in per.items():
            _say(f"{pair}, {_what(t)}: {_ratio_text(m)} (paired per round)")
    _engine_limits(data)
    if data.get("numa"):
        _engine_numa(data["numa"])
    for n in notes:
        _say(n)
    if data["tlb_note"]:
        _say(f"TLB counters: {data['tlb_note']}.")
    _say(f"{NOISE}. " + data["note"] + ".")
    _vm(data)


# --------------------------------------------------------------------------- fleet, hotpath


def fleet(data: dict) -> None:
    rows, mem, notes = [], [], []
    for r in data["results"]:
        if r["status"] != "ok":
            notes.append(f"{r['case']}: {r['status']}: {r['reason']}")
            continue
        mib = [f"{r[k] >> 10}" for k in ("memory_kb", "pss_kb", "pool_used_kb", "vmlck_kb", "page_cache_kb")]
        rows.append([r["case"], f"{_interval(r['loaded_s'], 2)} s", f"{_interval(r['first_token_s'], 2)} s", *mib])
        keys = (
            "per_engine_kb",
            "own_per_engine_kb",
            "shared_kb",
            "pinned_per_engine_kb",
            "mem_available_per_engine_kb",
        )
        layout = (r.get("layout") or "-") + (" (recommended)" if r.get("recommended") else "")
        mem.append([r["case"], layout, *(f"{r[k] >> 10}" for k in keys)])
    title = (
        f"{data['engines']} x llama-server on {os.path.basename(data['model'])} "
        f"({data['model_size'] >> 20} MiB), {data['rounds']} interleaved rounds"
    )
    columns = ["case", "all loaded (95% CI)", "first token, last engine (95% CI)", "memory MiB (sum)"]
    columns += ["anon Pss MiB", "huge pages MiB", "locked MiB", "model in page cache MiB"]
    _say(render.table(title, columns, rows))
    if mem:
        columns = ["case", "layout", "MiB per engine", "its own MiB", "shared MiB", "pinned MiB per engine"]
        columns += ["MemAvailable MiB per engine"]
        _say(render.table(f"Memory per engine, {data['engines']} engines", columns, mem))
    if data.get("reads"):
        _say(f"llama.cpp on this CPU: {data['reads']['why']}.")
    if data["staging_s"] is not None:
        _say(f"staging (once, not in the start-up times): {data['staging_s']:.2f} s")
    for n in notes:
        _say(n)
    _say(f"Note: {data['note']}.")


def hotpath(data: dict) -> None:
    rows = []
    for e in data["results"]:
        extra = _interval(e["extra_ns"], 2) if "extra_ns" in e else "-"
        ins = f"{e['instructions_per_pair']:.1f}" if "instructions_per_pair" in e else "-"
        xins = f"{e['extra_instructions']:+.1f}" if "extra_instructions" in e else "-"
        rows.append([e["library"], _interval(e["ns_per_pair"], 2), extra, ins, xins])
    columns = ["library", "ns/pair (95% CI)", "extra ns (95% CI)", "instructions/pair", "extra instructions"]
    _say(render.table(f"malloc({data['size']})/free pairs, {data['rounds']} rounds", columns, rows))
    _say(data["note"] + ".")
