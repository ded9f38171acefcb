"""The queue model without NATS: plan an event, apply it, check the resulting order."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from qserver.errors import BadRequest, Locked, NotFound, Refused
from qserver.protocol import api
from qserver.protocol.queue_log import AnyEvent
from services.queue.model import QueueModel


def add(m: QueueModel, name: str, **pos: Any) -> str:
    req = msgspec.convert(
        {"item": {"name": name}, "user": "u", "user_group": "primary", **pos}, api.QueueItemAdd
    )
    ev = m.plan_add(req)
    m.apply(ev)
    return ev.items[0].item_uid  # type: ignore[return-value]


def names(m: QueueModel) -> list[str]:
    return [it.name for it in m.items]


def apply(m: QueueModel, ev: AnyEvent | None) -> None:
    assert ev is not None
    m.apply(ev)


@pytest.fixture
def model() -> QueueModel:
    m = QueueModel()
    for n in "abcde":
        add(m, n)
    return m


def test_add_positions_follow_the_reference(model: QueueModel) -> None:
    add(model, "F", pos="front")
    add(model, "B", pos="back")
    add(model, "two", pos=2)
    add(model, "neg", pos=-1)
    add(model, "far", pos=100)
    assert names(model) == ["F", "a", "two", "b", "c", "d", "e", "neg", "B", "far"]


def test_add_before_and_after_uid(model: QueueModel) -> None:
    uid_c = model.items[2].item_uid
    add(model, "x", before_uid=uid_c)
    add(model, "y", after_uid=uid_c)
    assert names(model) == ["a", "b", "x", "c", "y", "d", "e"]


def test_add_always_assigns_a_new_uid_and_the_submitter() -> None:
    m = QueueModel()
    req = msgspec.convert(
        {
            "item": {"name": "count", "item_uid": "mine", "user": "eve"},
            "user": "u",
            "user_group": "g",
        },
        api.QueueItemAdd,
    )
    item = m.plan_add(req).items[0]
    assert item.item_uid not in ("mine", None)
    assert (item.user, item.user_group) == ("u", "g")


def test_instruction_must_be_known() -> None:
    m = QueueModel()
    ok = msgspec.convert(
        {
            "item": {"item_type": "instruction", "name": "queue_stop"},
            "user": "u",
            "user_group": "g",
        },
        api.QueueItemAdd,
    )
    m.plan_add(ok)
    bad = msgspec.structs.replace(ok, item=msgspec.structs.replace(ok.item, name="reboot"))
    with pytest.raises(BadRequest, match="Unrecognized instruction: "):
        m.plan_add(bad)


@pytest.mark.parametrize(
    ("src", "dest", "expected"),
    [
        ({"pos": 0}, {"pos_dest": 2}, "bcade"),
        ({"pos": 4}, {"pos_dest": "front"}, "eabcd"),
        ({"pos": "front"}, {"pos_dest": "back"}, "bcdea"),
        ({"pos": -1}, {"pos_dest": -2}, "abced"),
        ({"pos": 1}, {"before_uid": 3}, "acbde"),
        ({"pos": 3}, {"before_uid": 1}, "adbce"),
        ({"pos": 1}, {"after_uid": 3}, "acdbe"),
        ({"pos": 3}, {"after_uid": 0}, "adbce"),
    ],
)
def test_move_puts_the_item_where_asked(
    model: QueueModel, src: dict[str, Any], dest: dict[str, Any], expected: str
) -> None:
    dest = {k: model.items[v].item_uid if k.endswith("uid") else v for k, v in dest.items()}
    ev, _ = model.plan_move(msgspec.convert({**src, **dest}, api.QueueItemMove))
    apply(model, ev)
    assert "".join(names(model)) == expected


def test_move_requires_an_existing_destination(model: QueueModel) -> None:
    with pytest.raises(NotFound):
        model.plan_move(msgspec.convert({"pos": 0, "pos_dest": 5}, api.QueueItemMove))
    with pytest.raises(BadRequest, match="Destination position or UID is not specified"):
        model.plan_move(msgspec.convert({"pos": 0}, api.QueueItemMove))


@pytest.mark.parametrize(
    ("batch", "dest", "reorder", "expected"),
    [
        ([3, 1], {"pos_dest": "front"}, False, "dbace"),
        ([3, 1], {"pos_dest": "front"}, True, "bdace"),
        ([0, 2], {"pos_dest": "back"}, False, "bdeac"),
        ([0, 4], {"before_uid": 2}, False, "baecd"),
        ([0, 4], {"after_uid": 2}, False, "bcaed"),
    ],
)
def test_move_batch(
    model: QueueModel, batch: list[int], dest: dict[str, Any], reorder: bool, expected: str
) -> None:
    uids = [model.items[i].item_uid for i in batch]
    dest = {k: model.items[v].item_uid if k.endswith("uid") else v for k, v in dest.items()}
    req = msgspec.convert({"uids": uids, "reorder": reorder, **dest}, api.QueueItemMoveBatch)
    ev, _ = model.plan_move_batch(req)
    apply(model, ev)
    assert "".join(names(model)) == expected


def test_move_batch_refuses_a_target_inside_the_batch(model: QueueModel) -> None:
    uids = [model.items[i].item_uid for i in (0, 1)]
    req = msgspec.convert({"uids": uids, "before_uid": uids[1]}, api.QueueItemMoveBatch)
    with pytest.raises(BadRequest, match="is in the batch"):
        model.plan_move_batch(req)


def test_remove_batch_ignores_or_refuses_missing(model: QueueModel) -> None:
    uids = [model.items[0].item_uid, "nope"]
    with pytest.raises(NotFound, match="nope"):
        model.plan_remove_batch(
            msgspec.convert({"uids": uids, "ignore_missing": False}, api.QueueItemRemoveBatch)
        )
    assert len(model.items) == 5
    ev, removed = model.plan_remove_batch(msgspec.convert({"uids": uids}, api.QueueItemRemoveBatch))
    apply(model, ev)
    assert [it.name for it in removed] == ["a"]
    assert names(model) == list("bcde")


def test_update_keeps_or_replaces_the_uid(model: QueueModel) -> None:
    uid = model.items[1].item_uid
    req = {"item": {"name": "new", "item_uid": uid}, "user": "u2", "user_group": "g"}
    ev = model.plan_update(msgspec.convert(req, api.QueueItemUpdate))
    apply(model, ev)
    assert (model.items[1].name, model.items[1].item_uid) == ("new", uid)
    ev = model.plan_update(msgspec.convert({**req, "replace": True}, api.QueueItemUpdate))
    apply(model, ev)
    assert model.items[1].item_uid != uid
    assert names(model) == ["a", "new", "c", "d", "e"]


def test_mode_set_checks_keys_and_types(model: QueueModel) -> None:
    ev = model.plan_mode(msgspec.convert({"mode": {"loop": True}}, api.QueueModeSet))
    assert ev.mode.loop and not ev.mode.ignore_failures
    with pytest.raises(BadRequest, match="Unknown queue mode parameter 'lop'"):
        model.plan_mode(msgspec.convert({"mode": {"lop": True}}, api.QueueModeSet))
    with pytest.raises(BadRequest, match="must be true or false"):
        model.plan_mode(msgspec.convert({"mode": {"loop": 1}}, api.QueueModeSet))


def test_lock_refuses_without_key_and_accepts_emergency_key() -> None:
    m = QueueModel(emergency_lock_key="sos")
    lock = msgspec.convert({"lock_key": "k", "queue": True, "user": "me"}, api.LockRequest)
    apply(m, m.plan_lock(lock))
    with pytest.raises(Locked) as refused:
        m.check_lock("queue", None)
    # The reference's text, which its clients match.
    assert refused.value.msg == (
        f"Invalid lock key: \nRE Manager is locked by me at {m.lock.time_str}\n"
        "Environment is locked: False\n"
        "Queue is locked:       True\n"
        "Emergency lock key:    set\n"
        "Note: ---"
    )
    m.check_lock("queue", "k")
    m.check_lock("environment", None)  # only the queue is locked
    with pytest.raises(Refused, match=r"^RE Manager was locked with a different key: \n"):
        m.plan_lock(msgspec.structs.replace(lock, lock_key="other"))
    with pytest.raises(Refused, match=r"^Invalid lock key: \nRE Manager is locked by me"):
        m.plan_unlock(api.UnlockRequest(lock_key="wrong"))
    with pytest.raises(Refused, match=r"^Invalid lock key: "):
        m.check_lock_key("wrong")
    apply(m, m.plan_unlock(api.UnlockRequest(lock_key="sos")))
    m.check_lock("queue", None)


def test_lock_refusals_use_the_reference_texts() -> None:
    m = QueueModel()
    neither = msgspec.convert({"lock_key": "k", "user": "me"}, api.LockRequest)
    with pytest.raises(BadRequest) as info:
        m.plan_lock(neither)
    assert info.value.msg == (
        "Invalid option: environment and/or queue must be selected: environment=False queue=False"
    )
    with pytest.raises(BadRequest, match=r"^Lock key must be a non-empty string: lock_key = ''$"):
        m.plan_lock(msgspec.structs.replace(neither, lock_key="", queue=True))


def test_a_missing_item_and_missing_batch_uids_use_the_reference_texts(
    model: QueueModel,
) -> None:
    no_item = msgspec.convert({"user": "u", "user_group": "primary"}, api.QueueItemAdd)
    with pytest.raises(BadRequest) as info:
        model.plan_add(no_item)
    assert info.value.msg == (
        "Failed to add an item: Incorrect request format: request contains no item info"
    )
    missing = "The queue does not contain items with the following UIDs: ['x', 'y']"
    remove = api.QueueItemRemoveBatch(uids=["x", "y"], ignore_missing=False)
    with pytest.raises(NotFound) as info:
        model.plan_remove_batch(remove)
    assert info.value.msg == missing
    with pytest.raises(NotFound) as info:
        model.plan_move_batch(api.QueueItemMoveBatch(uids=["x", "y"], pos_dest="front"))
    assert info.value.msg == missing


def test_snapshot_then_load_restores_everything(model: QueueModel) -> None:
    apply(model, model.plan_mode(msgspec.convert({"mode": {"loop": True}}, api.QueueModeSet)))
    snap = msgspec.msgpack.decode(
        msgspec.msgpack.encode(model.snapshot(42)), type=type(model.snapshot(0))
    )
    other = QueueModel()
    other.load(snap)
    assert other.items.as_list() == model.items.as_list()
    assert other.mode == model.mode
    assert other.plan_queue_uid == model.plan_queue_uid
    other.index_of(model.items[3].item_uid)  # the uid index is rebuilt  # type: ignore[arg-type]
