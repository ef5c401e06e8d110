"""Hypothesis fuzz of safetensors.parse_header on arbitrary bytes, in process: nothing but
FormatError, and what it accepts lies inside the claimed file.  The mutation fuzzer of both
formats, with per-input time and memory limits, is tests/fuzz/."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hugeload
import hugeload.safetensors as hs

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=300), st.integers(0, 1000))
def test_random_bytes(data, extra):
    """Arbitrary bytes, claimed file size anywhere around them."""
    for size in (len(data), len(data) + extra):
        try:
            h = hs.parse_header(data, size)
        except hugeload.FormatError:
            continue
        data_len = size - h.data_start
        assert all(0 <= t.begin <= t.end <= data_len for t in h.tensors.values())
