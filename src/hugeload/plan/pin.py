"""What `hugeload stage --reserve` pins for a model: the staged file, the pages kept free for
the heap copies llama.cpp makes of it, or both.  Pure: from plan/buffers' split of the weights
(what the engine reads from the mapping and from heap copies on this CPU and build).

Pages `stage --reserve` adds are pinned until the model is unstaged: no other program gets
them meanwhile.  So by default (`Pin.READS`) it pins what the engine will read, as
`buffers.advise` recommends:
- STAGE (the engine reads the mapping): the staged file; the heap copies are minor, and their
  pages would only help an engine started under `hugeload run` anyway.
- BOTH: the staged file and pages for the heap copies.
- HEAP (the engine reads the mapping once, at load, then only its heap copy): no staged copy
  at all.  A hugetlbfs file pins every page it holds, so "staged but not pinned" does not
  exist, and a `stage` that staged nothing would print no path to give the engine: the
  command refuses in one line, before changing anything, and says what gives the engine
  huge pages instead (`hugeload run --reserve`, which holds the heap copy's pages only while
  the engine runs) or how to stage anyway (`--pin both`, `--pin file`).
- no prediction (not GGUF, a malformed header, no gguf package): as before this choice
  existed, the file and whatever heap copies were predicted (none).
`Pin.FILE` and `Pin.BOTH` are what the user asked, whatever the advice.
"""

from enum import StrEnum
from typing import NamedTuple

from hugeload.plan.buffers import Advice, Split, advise


class Pin(StrEnum):
    """What `stage --reserve` grows the pools for (`--pin`)."""

    READS = "reads"  # what the engine will read (buffers.advise): the default
    FILE = "file"  # the staged file only
    BOTH = "both"  # the staged file and pages kept free for the engine's heap copies


PINS = tuple(p.value for p in Pin)


class PinPlan(NamedTuple):
    pin: Pin
    file: bool  # stage the file (its pages reserved); False: refuse, nothing is staged
    heap: bool  # also keep pages free for the predicted heap copies (owned by the model)
    advice: Advice | None  # None: what the engine reads cannot be predicted
    why: str  # one sentence; when not `file`, the refusal

    def to_json(self) -> dict:
        return {
            "pin": self.pin.value,
            "file": self.file,
            "heap": self.heap,
            "advice": None if self.advice is None else self.advice.value,
            "why": self.why,
        }


def pin_plan(pin: Pin, split: Split | None, model: str = "the model") -> PinPlan:
    """What `stage --reserve` pins for `model` (named in the sentences), given where the
    engine reads its weights (`split`; None: unknown)."""
    advice = None if split is None else advise(split)[0]
    if pin is Pin.FILE:
        return PinPlan(pin, True, False, advice, "the staged file only, as asked (--pin file)")
    if pin is Pin.BOTH:
        return PinPlan(pin, True, True, advice, "the staged file and its heap copies' pages, as asked (--pin both)")
    if split is None:
        return PinPlan(
            pin,
            True,
            True,
            None,
            "the staged file (what the engine reads from it cannot be predicted: not a GGUF model llama.cpp reads)",
        )
    m, h = split.fraction(split.mapping), split.fraction(split.heap)
    if advice is Advice.STAGE:
        return PinPlan(
            pin,
            True,
            False,
            advice,
            f"the staged file: the engine reads {m:.1%} of the weights from it and {h:.1%} from a heap copy, "
            "too little to keep pages for (--pin both keeps them too)",
        )
    if advice is Advice.BOTH:
        return PinPlan(
            pin,
            True,
            True,
            advice,
            f"the staged file and its heap copies' pages: the engine reads {m:.1%} of the weights from the mapping "
            f"and {h:.1%} from a heap copy (that copy is in huge pages under hugeload run)",
        )
    return PinPlan(
        pin,
        False,
        True,
        advice,
        f"not staged: llama.cpp on this CPU reads {h:.1%} of the weights of {model} from a heap copy and {m:.1%} "
        "from the mapping, so a staged copy would pin pages it reads once, at load; put the heap copy in huge pages "
        f"with `hugeload run --reserve -- ENGINE -m {model}`, or stage it anyway with --pin both or --pin file",
    )
