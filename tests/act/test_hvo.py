"""act/hvo.py's bookkeeping on a fixture root (a plain file stands for the sysctl), no root
needed: when hugeload turns HVO on, when it puts it back, and what it never touches."""

import pytest

from hugeload.act import hvo, ledger
from hugeload.errors import UsageError
from hugeload.probe.hvo import HVO_PATH, HVO_SYSCTL


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "root"
    (root / HVO_PATH).parent.mkdir(parents=True)
    state = tmp_path / "state"

    def value() -> int:
        return int((root / HVO_PATH).read_text())

    def set_value(v: int) -> None:
        (root / HVO_PATH).write_text(f"{v}\n")

    set_value(0)
    return root, state, value, set_value


def grow(root, state, how=hvo.Hvo.AUTO, owner="reserve", pages=1):
    """What a pool write does: HVO first, then the owner's share."""
    with ledger.edit(state, root) as data:
        said = hvo.before_grow(data, root, state, owner, how)
        ledger.record_pool_change(data, 2048, None, 0, pages, owner, "reserve")
        return said


def give_back(root, state, owner="reserve", pages=1):
    with ledger.edit(state, root) as data:
        ledger.record_pool_change(data, 2048, None, pages, 0, owner, "release")
        return hvo.after_shrink(data, root, state)


def test_on_while_pages_are_held_and_back_after_the_last(fake):
    root, state, value, _ = fake
    assert grow(root, state, owner="reserve") == "on (turned on by hugeload)"
    assert value() == 1
    assert ledger.load(state)["sysctls"][HVO_SYSCTL]["previous"] == 0
    assert grow(root, state, owner="model:m") == "on (turned on by hugeload)"
    assert give_back(root, state, owner="reserve") is None  # model:m still holds a page
    assert value() == 1
    assert give_back(root, state, owner="model:m") == "HVO back to 0"
    assert value() == 0 and ledger.load(state)["sysctls"] == {}
    assert [e["action"] for e in ledger.load(state)["events"] if e["action"].startswith("hvo")] == [
        "hvo-on",
        "hvo-restore",
    ]


def test_a_value_set_outside_hugeload_is_never_changed(fake):
    root, state, value, set_value = fake
    set_value(1)
    assert grow(root, state) == "on (set outside hugeload)"
    assert give_back(root, state) is None
    assert value() == 1 and ledger.load(state)["sysctls"] == {}


def test_changed_after_hugeload_turned_it_on_is_left_as_it_is(fake):
    root, state, value, set_value = fake
    grow(root, state)
    set_value(0)  # the user turns it off while hugeload holds pages
    assert give_back(root, state) is None
    assert value() == 0 and ledger.load(state)["sysctls"] == {}


def test_leave_never_writes(fake, monkeypatch):
    root, state, value, _ = fake
    assert grow(root, state, how=hvo.Hvo.LEAVE) == "off (left alone: --hvo leave)"
    assert value() == 0 and ledger.load(state)["sysctls"] == {}
    monkeypatch.setenv(hvo.ENV, "leave")
    assert hvo.mode() is hvo.Hvo.LEAVE
    assert hvo.mode("auto") is hvo.Hvo.AUTO  # the command's option wins over the environment
    with hvo.using("auto"):
        assert hvo.mode() is hvo.Hvo.AUTO
    assert hvo.mode() is hvo.Hvo.LEAVE
    monkeypatch.setenv(hvo.ENV, "sometimes")
    with pytest.raises(UsageError, match="auto, leave"):
        hvo.mode()


def test_no_hvo_in_the_kernel(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    assert grow(root, state) == "unavailable"
    assert not (root / HVO_PATH).exists()


def test_an_intent_left_by_a_killed_reservation_is_settled_then_put_back(fake):
    root, state, value, _ = fake
    # A reservation killed between its sysctl write and the outcome: the intent is all there is.
    with ledger.edit(state, root) as data:
        ledger.begin(data, state, "sysctl", "run:1@1", name=HVO_SYSCTL, path=HVO_PATH, before=0, target=1)
    (root / HVO_PATH).write_text("1\n")
    assert value() == 1
    # The next transaction records it; with no page held, settle() (gc) puts the old value back.
    assert hvo.settle(state, root) == "HVO back to 0"
    assert value() == 0
    data = ledger.load(state)
    assert data["intents"] == [] and data["sysctls"] == {}
    assert "recover-sysctl" in [e["action"] for e in data["events"]]


def test_an_intent_whose_write_never_happened_changes_nothing(fake):
    root, state, value, _ = fake
    with ledger.edit(state, root) as data:
        ledger.begin(data, state, "sysctl", "run:1@1", name=HVO_SYSCTL, path=HVO_PATH, before=0, target=1)
    assert hvo.settle(state, root) is None
    assert value() == 0 and ledger.load(state)["intents"] == [] and ledger.load(state)["sysctls"] == {}
