"""Refusals in the reference's words and shapes (docs/reference-facts.md, measured on
bluesky-queueserver 0.0.25), where its clients look at them (ADR 17).

Each case is (method, params, the reply's expected `msg`, its other keys); the queue holds
two items, `a` and `b`, and nothing runs.
"""

from __future__ import annotations

from typing import Any

import pytest

from qserver.client import Client
from tests.conftest import USER, Services, plan

ITEM = {"item_type": "plan", "name": "count", "args": [["det1"]]}
ADD_FAILED = {"qsize": None}
GET_FAILED = {"item": {}}
REMOVE_FAILED = {"item": {}, "qsize": None}
BATCH_FAILED = {"items": [], "qsize": None}


@pytest.fixture(scope="module")
async def two_items(module_services: Services) -> Client:
    client = module_services.client
    assert client is not None
    for name in ("a", "b"):
        assert (await client.request("queue_item_add", {"item": plan(name), **USER}))["success"]
    return client


CASES: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    # queue_item_add (reference-facts 2)
    (
        "queue_item_add",
        {"item": {"name": "count", "args": [["det1"]]}, **USER},
        "Failed to add an item: Incorrect request format: 'item_type' key is not found",
        {**ADD_FAILED, "item": {"name": "count", "args": [["det1"]]}},
    ),
    (
        "queue_item_add",
        {"item": {**ITEM, "item_type": "function"}, **USER},
        "Failed to add an item: Incorrect request format: unsupported 'item_type' value: "
        "'function', supported item types ('plan', 'instruction')",
        {**ADD_FAILED, "item": {**ITEM, "item_type": "function"}},
    ),
    (
        "queue_item_add",
        {"item": ITEM, "user": "Bob"},
        "Failed to add an item: Incorrect request format: user group is not specified",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        {"item": ITEM, "user_group": "primary"},
        "Failed to add an item: Incorrect request format: user name is not specified",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        {"item": ITEM},
        "Failed to add an item: Incorrect request format: user group is not specified",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        {"item": ITEM, "user": "Bob", "user_group": "nonexistent_group"},
        "Failed to add an item: Unknown user group: 'nonexistent_group'",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        USER,
        "Failed to add an item: Incorrect request format: request contains no item info",
        {**ADD_FAILED, "item": None},
    ),
    (
        "queue_item_add",
        {"item": "count", **USER},
        "Failed to add an item: Incorrect request format: incorrect type ('<class 'str'>') of "
        "item parameter: item parameter must have type 'dict'",
        {**ADD_FAILED, "item": "count"},
    ),
    (
        "queue_item_add",
        {"item": {"item_type": "instruction", "name": "bogus"}, **USER},
        "Failed to add an item: Unrecognized instruction: "
        "{'item_type': 'instruction', 'name': 'bogus'}",
        {**ADD_FAILED, "item": {"item_type": "instruction", "name": "bogus"}},
    ),
    (
        "queue_item_add",
        {"item": ITEM, **USER, "pos": "middle"},
        "Failed to add an item: Parameter 'pos' has incorrect value: pos='middle' "
        "(type=<class 'str'>)",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        {"item": ITEM, **USER, "before_uid": "nonexistent"},
        "Failed to add an item: Plan with UID 'nonexistent' is not in the queue.",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        {"item": ITEM, **USER, "before_uid": "x", "after_uid": "y"},
        "Failed to add an item: Ambiguous parameters: request to insert the plan before and "
        "after the reference plan",
        {**ADD_FAILED, "item": ITEM},
    ),
    (
        "queue_item_add",
        {"item": {"item_type": "plan", "name": "nonexistent_plan", "args": [["det1"]]}, **USER},
        "Failed to add an item: Plan validation failed: Plan 'nonexistent_plan' is not in the "
        "list of allowed plans.\nPlan: {'item_type': 'plan', 'name': 'nonexistent_plan', "
        "'args': [['det1']]}",
        {
            **ADD_FAILED,
            "item": {"item_type": "plan", "name": "nonexistent_plan", "args": [["det1"]]},
        },
    ),
    (
        "queue_item_add",
        {"item": ITEM, **USER, "foo": 1},
        "Failed to add an item: API request contains unsupported parameters: 'foo'. Supported "
        "parameters: ['lock_key', 'item', 'user', 'user_group', 'pos', 'before_uid', "
        "'after_uid']",
        {**ADD_FAILED, "item": ITEM},
    ),
    # queue_item_get / queue_item_remove (reference-facts 5)
    (
        "queue_item_get",
        {"pos": 5},
        "Failed to get an item: Index '5' is out of range (parameter pos = '5')",
        GET_FAILED,
    ),
    (
        "queue_item_get",
        {"pos": "middle"},
        "Failed to get an item: Parameter 'pos' has incorrect type: pos=middle "
        "(type=<class 'str'>)",
        GET_FAILED,
    ),
    (
        "queue_item_get",
        {"uid": "nonexistent"},
        "Failed to get an item: Item with UID 'nonexistent' is not in the queue.",
        GET_FAILED,
    ),
    (
        "queue_item_get",
        {"pos": 0, "uid": "x"},
        "Failed to get an item: Ambiguous parameters: plan position and UID is specified",
        GET_FAILED,
    ),
    (
        "queue_item_remove",
        {"pos": -3},
        "Failed to remove an item: Index '-3' is out of range (parameter pos = '-3')",
        REMOVE_FAILED,
    ),
    (
        "queue_item_remove",
        {"uid": "nonexistent"},
        "Failed to remove an item: Plan with UID 'nonexistent' is not in the queue.",
        REMOVE_FAILED,
    ),
    # queue_item_move, _move_batch, _remove_batch (reference-facts 4)
    (
        "queue_item_move",
        {"pos": 1, "pos_dest": 100},
        "Failed to move the item: Destination plan (position 100) was not found: Index '100' "
        "is out of range (parameter pos = '100').",
        REMOVE_FAILED,
    ),
    (
        "queue_item_move",
        {"pos": 100, "pos_dest": 0},
        "Failed to move the item: Source plan (position 100) was not found: Index '100' is "
        "out of range (parameter pos = '100').",
        REMOVE_FAILED,
    ),
    (
        "queue_item_move",
        {"pos": 0},
        "Failed to move the item: Destination position or UID is not specified.",
        REMOVE_FAILED,
    ),
    (
        "queue_item_move",
        {"pos_dest": 0},
        "Failed to move the item: Source position or UID is not specified.",
        REMOVE_FAILED,
    ),
    (
        "queue_item_move",
        {"pos": 0, "pos_dest": 1, "before_uid": "x"},
        "Failed to move the item: Ambiguous parameters: Both position and uid is specified for "
        "the destination plan.",
        REMOVE_FAILED,
    ),
    (
        "queue_item_move",
        {"uid": "nonexistent", "pos_dest": 0},
        "Failed to move the item: Source plan (UID 'nonexistent') was not found: Item with UID "
        "'nonexistent' is not in the queue..",
        REMOVE_FAILED,
    ),
    (
        "queue_item_move_batch",
        {"uids": ["x"]},
        "Failed to move the batch of items: Destination for the batch is not specified: use "
        "parameters 'pos_dest', 'before_uid' or 'after_uid'",
        BATCH_FAILED,
    ),
    (
        "queue_item_move_batch",
        {"uids": ["nonexistent"], "pos_dest": "front"},
        "Failed to move the batch of items: The queue does not contain items with the "
        "following UIDs: ['nonexistent']",
        BATCH_FAILED,
    ),
    (
        "queue_item_remove_batch",
        {"uids": ["nonexistent"], "ignore_missing": False},
        "Failed to remove a batch of items: The queue does not contain items with the "
        "following UIDs: ['nonexistent']",
        BATCH_FAILED,
    ),
    (
        "queue_item_remove_batch",
        {},
        "Failed to remove a batch of items: Request does not contain the list of UIDs",
        BATCH_FAILED,
    ),
    # queue_mode_set (reference-facts 6)
    (
        "queue_mode_set",
        {"mode": {"loop": 1}},
        "Failed to set queue mode: Unsupported type '<class 'int'>' of the parameter 'loop': "
        "expected type '<class 'bool'>'",
        {},
    ),
    (
        "queue_mode_set",
        {"mode": {"foo": True}},
        "Failed to set queue mode: Unsupported plan queue mode parameter 'foo': supported "
        "parameters ['loop', 'ignore_failures']",
        {},
    ),
    (
        "queue_mode_set",
        {"mode": 5},
        "Failed to set queue mode: Queue mode is passed using object of unsupported type "
        "'<class 'int'>': (5). Supported types: ('dict', 'str'), supported string value: "
        "'default'",
        {},
    ),
    (
        "queue_mode_set",
        {},
        "Failed to set queue mode: Parameter 'mode' is not found in request {}",
        {},
    ),
    # locks (reference-facts 7)
    (
        "lock",
        {"lock_key": "k1"},
        "Error: User name is not specified: 'user' is a required parameter",
        {"lock_info": {}, "lock_info_uid": None},
    ),
    (
        "lock",
        {"user": "Bob", "queue": True},
        "Error: Lock key is not specified: 'lock_key' is a required parameter",
        {"lock_info": {}, "lock_info_uid": None},
    ),
    (
        "lock",
        {"lock_key": "", "user": "Bob", "queue": True},
        "Error: Lock key must be a non-empty string: lock_key = ''",
        {"lock_info": {}, "lock_info_uid": None},
    ),
    (
        "unlock",
        {},
        "Error: Request contains no lock key: 'lock_key' parameter is required",
        {"lock_info": {}, "lock_info_uid": None},
    ),
    # history (reference-facts 8)
    (
        "history_clear",
        {"size": 1, "item_uid": "x"},
        "Error: Parameters 'size' and 'item_uid' are mutually exclusive.",
        {},
    ),
    (
        "history_clear",
        {"foo": 1},
        "Error: API request contains unsupported parameters: 'foo'. Supported parameters: "
        "['lock_key', 'size', 'item_uid']",
        {},
    ),
    # plans_allowed (reference-facts 11): no prefix
    (
        "plans_allowed",
        {},
        "Incorrect request format: user group is not specified",
        {"plans_allowed": {}, "plans_allowed_uid": None},
    ),
    (
        "plans_allowed",
        {"user_group": "nope"},
        "Unknown user group: 'nope'",
        {"plans_allowed": {}, "plans_allowed_uid": None},
    ),
    # control calls with the environment closed (reference-facts 9)
    ("queue_start", {}, "RE Worker environment does not exist.", {}),
    ("re_pause", {}, "Environment does not exist. Can not pause Run Engine.", {}),
    ("re_resume", {}, "RE Manager is not paused: current state is 'idle'", {}),
    ("re_halt", {}, "RE Manager is not paused: current state is 'idle'", {}),
    ("environment_close", {}, "RE Worker environment does not exist.", {}),
    ("environment_destroy", {}, "RE environment does not exist", {}),
    (
        "queue_stop",
        {},
        "Failed to pause the queue. Queue is not running. Manager state: MState.IDLE",
        {},
    ),
    (
        "queue_autostart",
        {},
        "Error: Required 'enable' parameter is missing in 'queue_autostart' API call.",
        {},
    ),
    (
        "queue_item_execute",
        {"item": ITEM, **USER},
        "Failed to start execution of the item: RE Worker environment does not exist.",
        {**ADD_FAILED, "item": ITEM},
    ),
]


@pytest.mark.parametrize(
    ("method", "params", "msg", "shape"),
    CASES,
    ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)],
)
async def test_a_refusal_reads_as_the_references(
    two_items: Client, method: str, params: dict[str, Any], msg: str, shape: dict[str, Any]
) -> None:
    before = await two_items.request("queue_get")
    r = await two_items.request(method, params)
    assert r == {"success": False, "msg": msg, **shape}
    assert (await two_items.request("queue_get"))["plan_queue_uid"] == before["plan_queue_uid"]


async def test_a_wrong_lock_key_reads_as_the_references_with_the_lock_as_it_stands(
    two_items: Client,
) -> None:
    r = await two_items.request(
        "lock", {"lock_key": "k1", "queue": True, "user": "Bob", "note": None}
    )
    assert r["success"], r
    try:
        info = r["lock_info"]
        text = (
            f"Invalid lock key: \nRE Manager is locked by Bob at {info['time_str']}\n"
            "Environment is locked: False\nQueue is locked:       True\n"
            "Emergency lock key:    not set\nNote: ---"
        )
        for method in ("lock_info", "unlock"):
            r = await two_items.request(method, {"lock_key": "wrong"})
            assert r == {
                "success": False,
                "msg": f"Error: {text}",
                "lock_info": info,
                "lock_info_uid": r["lock_info_uid"],
            }
        r = await two_items.request("queue_clear")
        assert r == {"success": False, "msg": f"Error: {text}"}
        r = await two_items.request("queue_mode_set", {"mode": {"loop": True}})
        assert r == {"success": False, "msg": f"Failed to set queue mode: {text}"}
        r = await two_items.request("queue_item_add", {"item": ITEM, **USER})
        assert r == {
            "success": False,
            "msg": f"Failed to add an item: {text}",
            **ADD_FAILED,
            "item": ITEM,
        }
        r = await two_items.request("lock", {"lock_key": "k2", "queue": True, "user": "Alice"})
        assert r == {
            "success": False,
            "msg": "Error: RE Manager was locked with a different key: \n"
            + text[len("Invalid lock key: \n") :],
            "lock_info": {},
            "lock_info_uid": None,
        }
    finally:
        assert (await two_items.request("unlock", {"lock_key": "k1"}))["success"]
