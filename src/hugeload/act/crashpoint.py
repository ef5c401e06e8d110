"""Crash points: where the fault-injection tests may kill a hugeload command with SIGKILL.

The way SQLite's crash tests and FoundationDB's BUGGIFY work: the code names the places
between two writes where a crash matters (an intent written but not acted on, a pool written
but not recorded, a copy renamed but its manifest not written), and a test arms one of them
in a forked child, which then kills itself there with a real SIGKILL.  Random-time kills
(tests/act/test_crash.py does those too) rarely land in a window a few microseconds wide;
these land in every one of them.

Nothing arms a crash point outside a test: there is no environment variable or option for
it, only arm() called in the process itself.  Disarmed, point() counts and compares.
"""

import os
import signal
import sys

_armed = 0  # kill at the n-th point passed (0: never)
_passed = 0


def arm(n: int) -> None:
    """Kill this process at the n-th crash point it passes from now on (0: count only)."""
    global _armed, _passed
    _armed, _passed = n, 0


def passed() -> int:
    return _passed


def point(label: str) -> None:
    global _passed
    _passed += 1
    if _armed and _passed == _armed:
        sys.stderr.write(f"hugeload: crash point {_passed} ({label})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
