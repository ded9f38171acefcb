"""The 0MQ bridge's framing: the reference's request checks and texts, 0.0.1's names, encodings."""

from __future__ import annotations

import msgspec
import pytest

from qserver.protocol.api import MAX_REQUEST_BYTES
from services.zmq_bridge.wire import Call, WireError, decode_call, encode, encode_raw


def refused(body: bytes, encoding: str = "json") -> str:
    with pytest.raises(WireError) as e:
        decode_call(body, encoding)  # type: ignore[arg-type]
    return e.value.msg


def test_a_request_is_a_method_and_its_params() -> None:
    call = decode_call(b'{"method": "queue_item_get", "params": {"pos": 2}}', "json")
    assert call == Call("queue_item_get", {"pos": 2})


def test_params_may_be_left_out_or_null() -> None:
    assert decode_call(b'{"method": "status"}', "json") == Call("status", {})
    assert decode_call(b'{"method": "status", "params": null}', "json") == Call("status", {})


def test_malformed_json_is_answered_with_the_references_text() -> None:
    msg = refused(b'{"method": "status"')
    assert msg.startswith("Failed to decode the request: JSON decode error: ")


def test_a_request_that_is_not_a_dictionary_is_refused() -> None:
    assert refused(b"[1, 2]") == "Incorrect request type: <class 'list'>. Dictionary is expected"


def test_a_request_without_a_method_is_refused() -> None:
    msg = refused(b'{"params": {}}')
    assert msg == "Invalid request format: method is not specified: {'params': {}}"


def test_unexpected_keys_are_refused_by_name() -> None:
    msg = refused(b'{"method": "status", "id": 3}')
    assert msg == "Request contains unexpected keys ['id']. Allowed keys: ('method', 'params')"


def test_params_must_be_a_dictionary() -> None:
    assert "params must be a dictionary, not list" in refused(b'{"method": "a", "params": [1]}')


def test_a_method_must_be_a_string() -> None:
    assert "method must be a string" in refused(b'{"method": 5}')


def test_a_request_larger_than_the_limit_is_refused_before_decoding() -> None:
    body = b'{"method": "status", "params": {"x": "' + b"a" * MAX_REQUEST_BYTES + b'"}}'
    assert refused(body).startswith("Request is too large")


def test_msgpack_requests_and_replies() -> None:
    body = msgspec.msgpack.encode({"method": "queue_get", "params": {}})
    assert decode_call(body, "msgpack") == Call("queue_get", {})
    assert refused(b"\xc1", "msgpack").startswith("Failed to decode the request: MSGPACK")
    reply = encode_raw(b'{"success": true, "msg": ""}', "msgpack")
    assert msgspec.msgpack.decode(reply) == {"success": True, "msg": ""}
    assert msgspec.msgpack.decode(encode({"a": 1}, "msgpack")) == {"a": 1}


def test_a_json_reply_goes_out_unchanged() -> None:
    data = b'{"success":true,"msg":"","items":[]}'
    assert encode_raw(data, "json") is data


# ----- the first release's requests (bluesky-queueserver 0.0.1's `qserver -c`) -----


def test_v001_ping_is_an_empty_method_name() -> None:
    assert decode_call(b'{"method": "", "params": {}}', "json") == Call("ping", {})


def test_v001_plan_add_becomes_item_add_with_todays_group() -> None:
    body = msgspec.json.encode(
        {
            "method": "queue_plan_add",
            "params": {
                "plan": {"name": "count", "args": [["det1"]]},
                "pos": "front",
                "user": "qserver-cli",
                "user_group": "root",
            },
        }
    )
    call = decode_call(body, "json")
    assert call == Call(
        "queue_item_add",
        {
            "item": {"name": "count", "args": [["det1"]], "item_type": "plan"},
            "pos": "front",
            "user": "qserver-cli",
            "user_group": "primary",
        },
    )


def test_v001_plan_add_without_a_plan_is_refused() -> None:
    body = b'{"method": "queue_plan_add", "params": {"pos": 1}}'
    assert refused(body) == "Invalid request to 'queue_plan_add': 'plan' must be a dictionary"


def test_v001_plan_add_with_a_bad_position_is_refused() -> None:
    body = b'{"method": "queue_plan_add", "params": {"plan": {"name": "count"}, "pos": "mid"}}'
    assert "invalid position 'mid'" in refused(body)


@pytest.mark.parametrize(
    ("params", "expected"),
    [({}, {"pos": "back"}), ({"pos": -2}, {"pos": -2}), ({"pos": "front"}, {"pos": "front"})],
)
def test_v001_plan_get_and_remove_take_a_position(
    params: dict[str, object], expected: dict[str, object]
) -> None:
    for old, new in (
        ("queue_plan_get", "queue_item_get"),
        ("queue_plan_remove", "queue_item_remove"),
    ):
        body = msgspec.json.encode({"method": old, "params": params})
        assert decode_call(body, "json") == Call(new, expected)


def test_v001_allowed_lists_for_root_ask_for_the_primary_group() -> None:
    body = b'{"method": "plans_allowed", "params": {"user_group": "root"}}'
    assert decode_call(body, "json") == Call("plans_allowed", {"user_group": "primary"})
    other = b'{"method": "plans_allowed", "params": {"user_group": "test_user"}}'
    assert decode_call(other, "json") == Call("plans_allowed", {"user_group": "test_user"})
