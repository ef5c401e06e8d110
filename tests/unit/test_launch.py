"""hugeload.launch: the one way engines start.  Output, timeouts, signals, the exit status."""

import os
import signal
import sys
import threading
import time

import pytest

from hugeload import launch
from hugeload.errors import UsageError


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_capture_merges_stdout_and_stderr_and_keeps_odd_bytes():
    cmd = launch.Command(
        py("import sys; print('out'); sys.stdout.flush(); sys.stderr.buffer.write(b'err \\xff\\n')"),
        output=launch.Output.CAPTURE,
    )
    done = launch.run(cmd)
    assert done.returncode == 0 and not done.timed_out and done.wall_s > 0
    assert done.output.splitlines() == ["out", "err \ufffd"] and done.last_line() == "err \ufffd"


def test_environment_and_exit_status():
    env = {**os.environ, "HUGELOAD_TEST_VALUE": "42"}
    done = launch.run(launch.Command(py("import os, sys; sys.exit(int(os.environ['HUGELOAD_TEST_VALUE']))"), env))
    assert done.returncode == 42 and done.shell_status == 42 and done.output == ""
    assert done.last_line() == "exit 42"


def test_timeout_kills_and_says_so():
    t0 = time.perf_counter()
    done = launch.run(launch.Command(py("import time; time.sleep(30)"), output=launch.Output.CAPTURE, timeout=0.5))
    assert done.timed_out and time.perf_counter() - t0 < 10
    assert done.returncode == -signal.SIGKILL and done.shell_status == 128 + signal.SIGKILL
    assert "longer than" in done.last_line()


def test_tail_keeps_the_last_lines_of_a_chatty_engine():
    code = "import sys\nfor i in range(100000): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    done = launch.run(launch.Command(py(code), output=launch.Output.TAIL))
    assert done.returncode == 3 and done.last_line() == "line 99999"
    assert len(done.output.splitlines()) == launch.TAIL_LINES


def test_a_missing_program_is_one_line():
    with pytest.raises(UsageError, match="command not found: /nonexistent/engine"):
        launch.run(launch.Command(["/nonexistent/engine"]))


def _when_ready(marker, action) -> threading.Thread:
    """Run `action` once the engine has created `marker` (its signal handling is set up)."""

    def wait_then_act():
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    t = threading.Thread(target=wait_then_act, daemon=True)
    t.start()
    return t


# An engine that handles SIGTERM (exit 7, or ignore), says so by creating argv[1], then sleeps.
HANDLES_TERM = (
    "import pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, {handler})\n"
    "pathlib.Path(sys.argv[1]).touch()\n"
    "time.sleep(60)"
)


def test_an_interrupted_wait_kills_the_engine(tmp_path):
    # Ctrl-C as Python delivers it: a suite started in the background of a non-interactive shell
    # inherits SIGINT ignored (POSIX), and Python then installs no handler of its own
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    ready = tmp_path / "ready"
    running = launch.start(launch.Command([*py(HANDLES_TERM.format(handler="signal.SIG_IGN")), str(ready)]))
    try:
        with pytest.raises(KeyboardInterrupt):
            _when_ready(ready, lambda: os.kill(os.getpid(), signal.SIGINT))
            running.wait()
        assert running.poll() == -signal.SIGKILL  # killed and reaped, not left running
    finally:
        signal.signal(signal.SIGINT, old)
        running.kill()  # only ever does something when the test failed


def test_signals_are_forwarded_and_the_wait_goes_on(tmp_path):
    # The engine decides what SIGTERM means (here: exit 7); we wait for it, as a shell does.
    ready = tmp_path / "ready"
    before = signal.getsignal(signal.SIGTERM)
    code = HANDLES_TERM.format(handler="lambda *a: sys.exit(7)")
    t = _when_ready(ready, lambda: os.kill(os.getpid(), signal.SIGTERM))
    done = launch.run(launch.Command([*py(code), str(ready)]), forward_signals=True)
    t.join()
    assert done.returncode == 7 and signal.getsignal(signal.SIGTERM) is before


def test_stop_terminates_then_kills(tmp_path):
    ready = tmp_path / "ready"
    running = launch.start(launch.Command([*py(HANDLES_TERM.format(handler="signal.SIG_IGN")), str(ready)]))
    _when_ready(ready, lambda: None).join()
    t0 = time.perf_counter()
    running.stop(grace=0.5)
    assert running.poll() == -signal.SIGKILL and time.perf_counter() - t0 < 5
