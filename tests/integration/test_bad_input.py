"""Every kind of bad input gets a clear `success: false` reply; the state is left unchanged."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qserver.client import Client
from tests.conftest import USER, Services, plan, tag

VALID = {"item": plan("count", ["det1"]), **USER}


async def snapshot(client: Client) -> tuple[Any, ...]:
    q = await client.request("queue_get")
    st = await client.request("status")
    return q["items"], q["plan_queue_uid"], st["lock_info_uid"], st["plan_queue_mode"]


@pytest.fixture(scope="module")
async def seeded(module_services: Services) -> Client:
    """A queue with items a and b, shared: every test here must leave it as it found it."""
    client = module_services.client
    assert client is not None
    for n in ("a", "b"):
        assert (await client.request("queue_item_add", {"item": plan(n), **USER}))["success"]
    return client


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("queue_item_add", b'{"item": {"name": "count"', "malformed JSON"),
    ("queue_item_add", b"[1, 2, 3]", "Expected `object`"),
    ("queue_item_add", b"not json at all", "malformed JSON"),
    (
        "queue_item_add",
        json.dumps({**VALID, "colour": "red"}).encode(),
        "Failed to add an item: API request contains unsupported parameters: 'colour'.",
    ),
    (
        "queue_item_add",
        json.dumps({"item": plan("count")}).encode(),
        "Failed to add an item: Incorrect request format: user group is not specified",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"item_type": "plan", "args": []}}).encode(),
        "missing required field `name`",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"args": []}}).encode(),
        "Incorrect request format: 'item_type' key is not found",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"item_type": "plan", "name": 5}}).encode(),
        "at `$.item.name`",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"item_type": "plan", "name": "c", "kwargs": []}}).encode(),
        "at `$.item.kwargs`",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"name": "c", "item_type": "macro"}}).encode(),
        "unsupported 'item_type' value: 'macro', supported item types ('plan', 'instruction')",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"item_type": "plan", "name": "c", "extra": 1}}).encode(),
        "unknown field `extra`",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "pos": "middle"}).encode(),
        "Parameter 'pos' has incorrect value: pos='middle' (type=<class 'str'>)",
    ),
    ("queue_item_add", json.dumps({**VALID, "pos": 1.5}).encode(), "pos='1.5'"),
    ("queue_item_add", json.dumps({**VALID, "pos": True}).encode(), "pos='True'"),
    (
        "queue_item_add",
        json.dumps({**VALID, "pos": 1, "before_uid": "x"}).encode(),
        "Ambiguous parameters: plan position and UID is specified",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "before_uid": "no-such-uid"}).encode(),
        "Plan with UID 'no-such-uid' is not in the queue.",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"item_type": "plan", "name": ""}}).encode(),
        "name is empty",
    ),
    (
        "queue_item_add",
        json.dumps({**VALID, "item": {"name": "x", "item_type": "instruction"}}).encode(),
        "Unrecognized instruction: {'item_type': 'instruction', 'name': 'x'}",
    ),
    (
        "queue_item_add",
        b'{"user": "u", "user_group": "g", "item": {"name": "c", "args": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}}",
        "nesting is too deep",
    ),
    (
        "queue_item_remove",
        json.dumps({"pos": 2}).encode(),
        "Failed to remove an item: Index '2' is out of range (parameter pos = '2')",
    ),
    ("queue_item_remove", json.dumps({"pos": -3}).encode(), "Index '-3' is out of range"),
    (
        "queue_item_remove",
        json.dumps({"uid": "nope"}).encode(),
        "Failed to remove an item: Plan with UID 'nope' is not in the queue.",
    ),
    (
        "queue_item_remove",
        json.dumps({"pos": 0, "uid": "x"}).encode(),
        "Ambiguous parameters: plan position and UID is specified",
    ),
    (
        "queue_item_move",
        json.dumps({"pos": 0, "pos_dest": 9}).encode(),
        "Failed to move the item: Destination plan (position 9) was not found: "
        "Index '9' is out of range (parameter pos = '9').",
    ),
    (
        "queue_item_move",
        json.dumps({"pos": 0}).encode(),
        "Failed to move the item: Destination position or UID is not specified.",
    ),
    (
        "queue_item_move",
        json.dumps({"uid": "nope", "pos_dest": 0}).encode(),
        "Source plan (UID 'nope') was not found: Item with UID 'nope' is not in the queue..",
    ),
    (
        "queue_item_move_batch",
        json.dumps({"uids": ["a", "a"], "pos_dest": "front"}).encode(),
        "Failed to move the batch of items: The list of contains repeated UIDs (1 UIDs)",
    ),
    ("queue_item_move_batch", json.dumps({"uids": ["x"], "pos_dest": 3}).encode(), "$.pos_dest"),
    (
        "queue_item_remove_batch",
        json.dumps({"uids": "abc"}).encode(),
        "Parameter 'uids' must be a list: type(uids) = <class 'str'>",
    ),
    (
        "queue_item_remove_batch",
        json.dumps({}).encode(),
        "Failed to remove a batch of items: Request does not contain the list of UIDs",
    ),
    (
        "queue_item_update",
        json.dumps({"item": plan("x"), **USER}).encode(),
        "Item description contains no UID and UID generation is skipped",
    ),
    ("queue_item_add_batch", json.dumps({"items": {"a": 1}, **USER}).encode(), "at `$.items`"),
    (
        "queue_mode_set",
        json.dumps({"mode": {"loop": "yes"}}).encode(),
        "Failed to set queue mode: Unsupported type '<class 'str'>' of the parameter 'loop': "
        "expected type '<class 'bool'>'",
    ),
    (
        "queue_mode_set",
        json.dumps({"mode": "fast"}).encode(),
        "Failed to set queue mode: Queue mode is passed using object of unsupported type",
    ),
    ("lock", json.dumps({"lock_key": "", "queue": True, "user": "u"}).encode(), "non-empty"),
    (
        "lock",
        json.dumps({"lock_key": "k", "user": "u"}).encode(),
        "environment and/or queue must be selected",
    ),
    (
        "unlock",
        json.dumps({}).encode(),
        "Error: Request contains no lock key: 'lock_key' parameter is required",
    ),
    ("manager_stop", json.dumps({"option": "maybe"}).encode(), "$.option"),
    ("history_get", json.dumps({"limit": -1}).encode(), "limit must be"),
    (
        "history_clear",
        json.dumps({"size": "all"}).encode(),
        "Error: The 'size' parameter must be an integer: size='all'",
    ),
    (
        "status",
        json.dumps({"verbose": True}).encode(),
        "API request contains unsupported parameters: 'verbose'. Supported parameters: []",
    ),
]


@pytest.mark.parametrize(
    ("method", "body", "expected"), BAD_BODIES, ids=[f"{m}:{e}" for m, _, e in BAD_BODIES]
)
async def test_bad_request_is_refused_with_a_clear_message(
    seeded: Client, method: str, body: bytes, expected: str
) -> None:
    before = await snapshot(seeded)
    reply = json.loads(await seeded.request_raw(method, body))
    assert reply["success"] is False
    assert expected in reply["msg"], reply["msg"]
    assert await snapshot(seeded) == before


async def test_unknown_method_gets_an_answer(seeded: Client) -> None:
    reply = await seeded.request("queue_item_teleport", {})
    assert reply == {"success": False, "msg": "Unknown method 'queue_item_teleport'"}


async def test_oversize_payload_is_refused_and_service_keeps_running(seeded: Client) -> None:
    before = await snapshot(seeded)
    huge = {"item": {**plan("count"), "kwargs": {"blob": "x" * 600_000}}, **USER}
    reply = await seeded.request("queue_item_add", huge)
    assert not reply["success"] and "too large" in reply["msg"]
    assert await snapshot(seeded) == before
    added = await seeded.request("queue_item_add", VALID)
    assert added["success"]
    await seeded.request("queue_item_remove", {"uid": added["item"]["item_uid"]})


async def test_empty_body_means_no_parameters(seeded: Client) -> None:
    reply = json.loads(await seeded.request_raw("queue_item_get", b""))
    assert reply["success"] and tag(reply["item"]) == "b"
