"""plan/pin.py: what `stage --reserve` pins, for every advice of plan/buffers and for a model
whose reads cannot be predicted.  The CLI on the real kernel: tests/act/test_stage_pin.py."""

import pytest

from hugeload.plan import buffers
from hugeload.plan.buffers import Advice, Split
from hugeload.plan.pin import Pin, pin_plan

# One split per advice (buffers.advise: a part under 10% of the file is minor).
SPLITS = {
    Advice.STAGE: Split(mapping=95, tables=1, heap=4),
    Advice.HEAP: Split(mapping=1, tables=1, heap=98),
    Advice.BOTH: Split(mapping=20, tables=1, heap=79),
}


def test_the_splits_stand_for_their_advice():
    assert {a: buffers.advise(s)[0] for a, s in SPLITS.items()} == {a: a for a in SPLITS}


@pytest.mark.parametrize(
    "advice, file, heap",
    [
        (Advice.STAGE, True, False),  # the heap copy is minor: the file only
        (Advice.BOTH, True, True),
        (Advice.HEAP, False, True),  # read once at load: refused, nothing staged
    ],
)
def test_reads_pins_what_the_engine_reads(advice, file, heap):
    p = pin_plan(Pin.READS, SPLITS[advice], "m.gguf")
    assert (p.file, p.heap, p.advice) == (file, heap, advice)
    assert p.to_json() == {"pin": "reads", "file": file, "heap": heap, "advice": advice.value, "why": p.why}


def test_heap_refusal_says_what_to_do_instead():
    p = pin_plan(Pin.READS, SPLITS[Advice.HEAP], "models/m.gguf")
    assert "98.0% of the weights of models/m.gguf from a heap copy" in p.why
    assert "`hugeload run --reserve -- ENGINE -m models/m.gguf`" in p.why
    assert "--pin both" in p.why and "--pin file" in p.why
    assert "\n" not in p.why


def test_no_prediction_keeps_the_old_behaviour():
    """Not GGUF, malformed, no gguf package: the file and whatever heap copies were predicted."""
    p = pin_plan(Pin.READS, None)
    assert (p.file, p.heap, p.advice) == (True, True, None)


@pytest.mark.parametrize("split", [*SPLITS.values(), None])
def test_asked_pins_are_what_was_asked(split):
    """--pin file and --pin both do what they say, whatever the advice (and never refuse)."""
    assert pin_plan(Pin.FILE, split)[1:3] == (True, False)
    assert pin_plan(Pin.BOTH, split)[1:3] == (True, True)


def test_the_advice_is_kept_for_the_json():
    assert pin_plan(Pin.FILE, SPLITS[Advice.HEAP]).advice is Advice.HEAP
    assert pin_plan(Pin.BOTH, None).advice is None
