"""The one way hugeload starts an engine: `hugeload run`, `bench engine`, `bench fleet` and
`bench hotpath` all launch through here.

A `Command` says what to run and how: argv, environment, the NUMA node to bind it to, what to
do with its output, a timeout, and whether our SIGINT/SIGTERM/SIGHUP go to it (a wrapper that
should stop when its engine stops, as a shell does).  `start()` returns a `Running` engine;
`Running.wait()` gives a `Finished` (exit status, output, wall time), and kills the engine
when the wait is interrupted, so no engine outlives the command that started it.
"""

import collections
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from hugeload.errors import UsageError

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TAIL_LINES = 40


class Output(Enum):
    """Where the engine's stdout and stderr go."""

    INHERIT = "inherit"  # ours: the user sees the engine as if run directly
    CAPTURE = "capture"  # both, merged, returned by wait() (the engine prints rates; bytes decoded leniently)
    TAIL = "tail"  # stdout dropped, the last lines of stderr kept (long-running servers: never blocks)
    DISCARD = "discard"


class NodeBinding(NamedTuple):
    """Run on one NUMA node: its CPUs and its memory (what `numactl --cpunodebind=N --membind=N` does)."""

    node: int
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str] | None = None  # None: ours
    bind: NodeBinding | None = None
    output: Output = Output.INHERIT
    timeout: float | None = None  # seconds; then the engine is killed and Finished.timed_out is set


class Finished(NamedTuple):
    returncode: int  # negative: killed by that signal (subprocess's convention)
    output: str  # CAPTURE: everything; TAIL: the last lines of stderr; else ""
    wall_s: float  # from the start to the exit
    timed_out: bool

    @property
    def shell_status(self) -> int:
        """The status a shell would report: 128 + the signal for a killed engine."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    def last_line(self) -> str:
        """The last non-empty line it printed, else `exit N`: the one-line reason for a failure."""
        lines = [x for x in self.output.strip().splitlines() if x.strip()]
        return lines[-1] if lines else f"exit {self.returncode}"


_STREAMS = {
    Output.INHERIT: (None, None),
    Output.CAPTURE: (subprocess.PIPE, subprocess.STDOUT),
    Output.TAIL: (subprocess.DEVNULL, subprocess.PIPE),
    Output.DISCARD: (subprocess.DEVNULL, subprocess.DEVNULL),
}


def _binder(bind: NodeBinding | None):
    if bind is None:
        return None
    from hugeload.act import numa

    def preexec():  # in the child, before exec: the engine starts on the node
        numa.bind_process(bind.node, bind.cpus)

    return preexec


class Running:
    """A started engine."""

    def __init__(self, command: Command, proc: subprocess.Popen, started: float):
        self.command, self.proc, self.started = command, proc, started
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._drain = None
        if command.output is Output.TAIL:
            self._drain = threading.Thread(target=self._read_tail, name="hugeload-tail", daemon=True)
            self._drain.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_tail(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._tail.append(line)

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> Finished:
        """Wait for the exit (at most the command's timeout, then kill it).  Any exception while
        waiting, Ctrl-C included, kills the engine before it propagates."""
        timed_out = False
        out = ""
        try:
            try:
                if self.command.output is Output.CAPTURE:
                    out, _ = self.proc.communicate(timeout=self.command.timeout)
                else:
                    self.proc.wait(timeout=self.command.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.proc.kill()
                out = (self.proc.communicate()[0] or "") if self.command.output is Output.CAPTURE else ""
                self.proc.wait()
        except BaseException:
            self.kill()
            raise
        wall = time.perf_counter() - self.started
        if self._drain is not None:
            self._drain.join(5)
            out = "".join(self._tail)
        if timed_out:
            out += f"\nhugeload: the engine ran longer than {self.command.timeout:.0f} s and was stopped"
        return Finished(self.proc.returncode, out or "", wall, timed_out)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def start(command: Command) -> Running:
    """Start the engine; UsageError (one line) when the program cannot be run."""
    stdout, stderr = _STREAMS[command.output]
    text = command.output in (Output.CAPTURE, Output.TAIL)
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            list(command.argv),
            env=None if command.env is None else dict(command.env),
            stdout=stdout,
            stderr=stderr,
            text=text,
            errors="replace" if text else None,  # random weights print arbitrary bytes
            preexec_fn=_binder(command.bind),
        )
    except FileNotFoundError:
        raise UsageError(f"command not found: {command.argv[0]}") from None
    except PermissionError:
        raise UsageError(f"cannot execute {command.argv[0]}: permission denied") from None
    return Running(command, proc, started)


def run(command: Command, forward_signals: bool = False) -> Finished:
    """Start the engine and wait for it.  With `forward_signals` (only from the main thread),
    SIGINT, SIGTERM and SIGHUP sent to us are passed on to the engine and we keep waiting for its
    exit, as a shell does; otherwise they interrupt the wait and the engine is killed."""
    running = start(command)
    if not forward_signals or threading.current_thread() is not threading.main_thread():
        return running.wait()
    old = {s: signal.signal(s, lambda sig, _frame: running.proc.send_signal(sig)) for s in FORWARDED}
    try:
        return running.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
