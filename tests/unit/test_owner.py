"""Who owns pages: /proc/PID/stat (probe/procs.py), ledger.Owner and the pressure agent's choice
(plan/pressure.py), on fixture trees written here."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hugeload.act import ledger
from hugeload.plan import pressure
from hugeload.probe import procs

STAT = (
    "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 {start} 1000 200 18446744073709551615"
)


def proc_tree(tmp_path, procs_: dict[int, tuple[str, str, int]], cmdline: bytes = b"hugeload\0run\0"):
    """A fixture root with /proc/<pid>/stat for each pid -> (comm, state, start ticks), and btime."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "stat").write_text("cpu  1 2 3 4\nbtime 1796542554\nprocesses 10\n")
    for pid, (comm, state, start) in procs_.items():
        d = root / "proc" / str(pid)
        d.mkdir()
        (d / "stat").write_text(STAT.format(pid=pid, comm=comm, state=state, start=start) + "\n")
        (d / "cmdline").write_bytes(cmdline)
    return str(root)


def test_stat_fields_even_with_spaces_and_parens_in_comm(tmp_path):
    root = proc_tree(tmp_path, {42: ("we (ird) ) name", "S", 123456)})
    s = procs.read_stat(root, 42)
    assert (s.pid, s.comm, s.state, s.ppid, s.start_ticks) == (42, "we (ird) ) name", "S", 1, 123456)
    assert procs.read_stat(root, 43) is None and procs.boot_time(root) == 1796542554
    assert procs.parse_stat("garbage") is None and procs.parse_stat("1 (x) S 1 2") is None


@given(st.text(max_size=40))
def test_stat_parser_never_raises(text):
    s = procs.parse_stat(text)
    assert s is None or isinstance(s.start_ticks, int)


def test_a_reused_pid_is_not_the_owner_whatever_its_command_line(tmp_path):
    # The old check was b"hugeload" in cmdline: a new process with the dead run's pid and
    # "hugeload" in its arguments kept the run's pages forever.
    root = proc_tree(tmp_path, {4242: ("python3", "S", 999), 4343: ("sleep", "Z", 500)})
    assert ledger.Owner.parse("run:4242@999").alive(root)
    assert not ledger.Owner.parse("run:4242@998").alive(root)  # same pid, started at another time
    assert not ledger.Owner.parse("bench:4343@500:pool-2048-4").alive(root)  # a zombie is gone
    assert not ledger.Owner.parse("run:4444@1").alive(root)  # no such process
    assert ledger.Owner.parse("run:4242").alive(root)  # written before start times: its pid runs
    assert ledger.Owner.parse("model:m").alive(root) and ledger.Owner.parse("reserve").alive(root)


@pytest.mark.parametrize(
    "text, kind, name, pid, start",
    [
        ("reserve", "reserve", "", None, None),
        ("model:llama-3.1+q4", "model", "llama-3.1+q4", None, None),
        ("run:12@345", "run", "", 12, 345),
        ("bench:12@345:pool-2048-10", "bench", "pool-2048-10", 12, 345),
        ("bench:12:stage-1g@node1", "bench", "stage-1g@node1", 12, None),  # before start times
        ("doctor:7@8", "doctor", "", 7, 8),
        ("test", "test", "", None, None),
        ("someone:else", "someone:else", "", None, None),
    ],
)
def test_owner_round_trip(text, kind, name, pid, start):
    o = ledger.Owner.parse(text)
    assert (o.kind, o.name, o.pid, o.start) == (kind, name, pid, start)
    assert str(o) == text


def test_pressure_never_releases_a_live_benchmark_whose_owner_has_a_key(tmp_path):
    root = proc_tree(tmp_path, {4242: ("hugeload", "S", 999)})
    owners = ["reserve", "model:m", "bench:4242@999:pool-2048-4", "bench:4242@998:pool-2048-4", "run:9@1", "test"]
    alive = [o for o in owners if ledger.Owner.parse(o).alive(root)]
    got = pressure.releasable_owners(owners, lambda o: ledger.Owner.parse(o).alive(root))
    assert got == ["reserve", "bench:4242@998:pool-2048-4", "run:9@1"]
    assert "bench:4242@999:pool-2048-4" in alive
