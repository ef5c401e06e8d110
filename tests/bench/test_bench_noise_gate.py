"""The A/A check of `bench engine` is a gate: a run whose A/A interval excludes 1 is flagged
too noisy to read (one line, the table's title, `"noisy": true`), and `--require-quiet` turns
that into exit status 75 so scripts can rerun.  Fake runs, no engine, nothing timed."""

import json

import pytest
from bench_helpers import FIXTURES

from hugeload.bench import engine, summary
from hugeload.bench.backings import backing
from hugeload.cli import bench_tables, cmd_bench, main, render


def measured(aa_rates: list[float], names=("default", "default#2", "2m"), rounds: int = 6) -> summary.Measured:
    """`default` at 10 t/s every round, its twin at aa_rates[r], 2m at 11."""
    runs = []
    for r in range(rounds):
        for name in names:
            rate = aa_rates[r] if name.endswith("#2") else 11.0 if name == "2m" else 10.0
            runs.append(summary.Run(name, r, 0, 1.0, None, {"pp64": rate, "tg16": 5.0}))
    return summary.Measured([backing(n) for n in names], runs)


def summarize(m: summary.Measured) -> dict:
    """What engine.run() returns for these runs (summary's data and the run's own fields)."""
    data = summary.summarize("/m/x.gguf", 1 << 30, ["llama-bench"], max(r.round for r in m.runs) + 1, m)
    data.update(tlb_note="", copies_held="all")
    return data


def test_a_twin_slower_in_every_round_is_noise_that_fails_the_gate():
    data = summarize(measured([7.0, 7.1, 6.9, 7.2, 7.0, 7.1]))
    assert data["noisy"] is True
    assert data["noisy_tests"] == ["default#2 vs default pp64: 0.705x (0.695-0.715)"]
    assert data["aa"]["default#2"]["against"] == "default"
    assert data["aa"]["default#2"]["tests"]["tg16"]["within_noise"]  # tg agreed: only pp is named


def test_a_twin_that_scatters_around_its_base_passes():
    data = summarize(measured([9.5, 10.4, 10.1, 9.8, 10.2, 9.9]))
    assert data["noisy"] is False and data["noisy_tests"] == []


def test_nothing_to_judge_without_a_twin_or_with_one_round():
    assert summarize(measured([10.0] * 6, names=("default", "2m")))["noisy"] is None
    one = summarize(measured([7.0], rounds=1))
    assert one["noisy"] is None and one["aa"]["default#2"]["tests"] == {}


def test_the_twin_of_any_backing_is_judged_against_that_backing():
    names = ("default", "2m", "2m#2")
    data = summarize(measured([11.0] * 6, names=names))  # 2m#2 equals 2m though both beat default
    assert data["noisy"] is False and data["aa"]["2m#2"]["against"] == "2m"


def table_text(data: dict) -> str:
    with render.console.capture() as cap:
        bench_tables.engine(data)
    return cap.get()


def test_the_table_is_marked_and_one_line_says_why():
    noisy = table_text(summarize(measured([7.0, 7.1, 6.9, 7.2, 7.0, 7.1])))
    assert noisy.splitlines()[0].startswith("TOO NOISY TO READ (A/A check failed): llama-bench")
    (line,) = [x for x in noisy.splitlines() if x.startswith("TOO NOISY TO READ:")]
    assert "default#2 vs default pp64: 0.705x (0.695-0.715)" in line and "rerun" in line
    quiet = table_text(summarize(measured([9.5, 10.4, 10.1, 9.8, 10.2, 9.9])))
    assert "TOO NOISY" not in quiet


def cli(monkeypatch, capsys, data: dict | None, *options: str) -> tuple[int, str]:
    monkeypatch.setattr(engine, "run", lambda *a, **k: data)
    argv = ["--root", str(FIXTURES / "zen-vm"), "bench", "engine", "--model", "/m/x.gguf", "--no-startup", *options]
    rc = main([*argv, "--", "llama-bench", "-p", "64"])
    out, err = capsys.readouterr()
    return rc, out + err


@pytest.mark.parametrize(
    "rates, plain, gated",
    [([7.0, 7.1, 6.9, 7.2, 7.0, 7.1], 0, cmd_bench.NOISY_EXIT), ([9.5, 10.4, 10.1, 9.8, 10.2, 9.9], 0, 0)],
)
def test_require_quiet_exits_75_on_a_noisy_run(monkeypatch, capsys, rates, plain, gated):
    data = summarize(measured(rates))
    assert cli(monkeypatch, capsys, data)[0] == plain
    assert cli(monkeypatch, capsys, data, "--require-quiet")[0] == gated
    rc, out = cli(monkeypatch, capsys, data, "--require-quiet", "--json")
    assert rc == gated and json.loads(out)["noisy"] is (gated != 0)


def test_require_quiet_refuses_a_run_it_could_not_judge(monkeypatch, capsys):
    rc, out = cli(monkeypatch, capsys, None, "--require-quiet", "--backings", "default,2m")
    assert rc != 0 and "name a backing twice" in out
    rc, out = cli(monkeypatch, capsys, None, "--require-quiet", "--rounds", "1")
    assert rc != 0 and "at least 2 rounds" in out
    # the twin failed in all but one round: quiet is not proven, and that is not "rerun"
    data = summarize(measured([7.0], rounds=1))
    assert cli(monkeypatch, capsys, data, "--require-quiet")[0] == 1


def test_runs_are_scored_by_their_best_sample():
    out = (
        'llama log with [brackets] in it\n{"n_prompt": 64, "n_gen": 0, "n_depth": 0, "avg_ts": 90.0, '
        '"stddev_ts": 20.0, "samples_ts": [70.0, 100.0, 100.0]}\n'
    )
    assert engine.parse_rates(out) == {"pp64": 100.0}
    assert engine.score({"tokens_per_s": 9.0}) == 9.0  # the markdown table has only the mean
    assert engine.with_samples(["/x/llama-bench", "-p", "8"]) == ["/x/llama-bench", "-p", "8", "-o", "jsonl"]
    assert engine.with_samples(["llama-bench", "-o", "md"]) == ["llama-bench", "-o", "md"]
    assert engine.with_samples(["llama-cli", "-p", "hi"]) == ["llama-cli", "-p", "hi"]
