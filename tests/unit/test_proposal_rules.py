"""Gated groups and auto-approve rules in the permissions file (ADR 30): pure logic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qserver.errors import BadRequest
from qserver.plan_tools.permissions import load_permissions
from qserver.plan_tools.proposal_rules import bind, devices_named, first_match, gate_of

ROOT = Path(__file__).resolve().parents[2]
PLANS = json.loads((ROOT / "sim_profile" / "existing_plans_and_devices.json").read_text())[
    "plans_existing"
]
DEVICES = {"det", "det1", "det2", "noisy_det", "motor", "motor1"}
RULES = {
    "auto_approve": [
        {
            "plans": ["count"],
            "devices": [":^det\\d?$"],
            "parameters": {"num": {"min": 1, "max": 10}, "delay": {"max": 1}},
        },
        {"plans": [":scan$"], "parameters": {"args": {"min": -2, "max": 2}}},
    ]
}


def perms(gate: Any) -> dict[str, Any]:
    return {"user_groups": {"root": {"allowed_plans": [None]}, "agent": {"proposals": gate}}}


def approved_by(name: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> int | None:
    rules = gate_of(perms(RULES), "agent")
    assert rules is not None
    rule = first_match(rules, name, args, kwargs or {}, PLANS[name], DEVICES)
    return None if rule is None else rule.index


def test_a_group_with_a_proposals_key_is_gated_and_others_are_not() -> None:
    assert gate_of(perms(True), "agent") == ()
    assert gate_of(perms(False), "agent") is None
    assert gate_of(perms(True), "root") is None
    assert gate_of(perms(True), "nobody") is None
    assert gate_of(None, "agent") is None
    assert len(gate_of(perms(RULES), "agent") or ()) == 2


def test_a_small_count_of_a_det_passes_and_anything_else_waits() -> None:
    assert approved_by("count", [["det1"]], {"num": 3}) == 0
    assert approved_by("count", [["det1"], 5]) == 0  # positional `num`
    assert approved_by("count", [["det1"]]) == 0  # `num` defaults to 1
    assert approved_by("count", [["det1"]], {"num": 1000}) is None
    assert approved_by("count", [["det1"]], {"num": None}) is None  # None: until stopped
    assert approved_by("count", [["noisy_det"]], {"num": 3}) is None  # device not matched
    assert approved_by("count", [["det1"]], {"num": 3, "delay": 5}) is None


def test_a_scan_passes_only_within_its_positional_bounds() -> None:
    # scan(detectors, *args, num=None, ...): `args` are the motor and its positions.
    assert approved_by("scan", [["det1"], "motor", -1, 1], {"num": 3}) == 1
    assert approved_by("scan", [["det1"], "motor", -5, 1], {"num": 3}) is None
    assert approved_by("scan", [["det1"], "motor"], {"num": 3}) is None  # no positions
    values = bind([["det1"], "motor", -1, 1], {"num": 3}, PLANS["scan"])
    assert values["args"] == ["motor", -1, 1] and values["num"] == 3


def test_devices_named_are_the_allowed_device_names_anywhere_in_the_parameters() -> None:
    named = devices_named([["det1", "x"], "motor"], {"md": {"a": "det2"}}, DEVICES)
    assert named == {"det1", "motor", "det2"}


@pytest.mark.parametrize(
    ("gate", "where"),
    [
        ("yes", "user_groups.agent.proposals: must be true"),
        ({"auto_aprove": []}, "unknown key 'auto_aprove'"),
        ({"auto_approve": [{"plan": ["count"]}]}, "auto_approve[0]: unknown key 'plan'"),
        ({"auto_approve": [{"plans": []}]}, "auto_approve[0].plans: must be a non-empty list"),
        ({"auto_approve": [{"plans": [":("]}]}, "invalid regular expression"),
        ({"auto_approve": [{"parameters": {"num": {"max": "10"}}}]}, "num.max: must be a number"),
        ({"auto_approve": [{"parameters": {"num": {"below": 1}}}]}, "unknown key 'below'"),
        ({"auto_approve": {"plans": ["count"]}}, "auto_approve: must be a list"),
    ],
)
def test_a_bad_rule_is_refused_naming_where_it_is(gate: Any, where: str) -> None:
    with pytest.raises(BadRequest) as e:
        load_permissions(perms(gate))
    assert where in e.value.msg


def test_root_cannot_be_gated() -> None:
    with pytest.raises(BadRequest, match="'root' cannot be gated"):
        load_permissions({"user_groups": {"root": {"proposals": True}}})
