"""User group permissions: strict loading, pattern semantics, allowed lists per group."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from qserver.errors import BadRequest
from qserver.plan_tools.permissions import (
    allowed_lists,
    device_names,
    find_device,
    function_allowed,
    load_permissions,
    load_permissions_file,
    parse_device_pattern,
    select_devices,
)

DATA = Path(__file__).parent / "data"
SAMPLE = yaml.safe_load((DATA / "existing_plans_and_devices.yaml").read_text())
PLANS: dict[str, Any] = SAMPLE["existing_plans"]
DEVICES: dict[str, Any] = SAMPLE["existing_devices"]
PERMISSIONS = load_permissions_file(DATA / "user_group_permissions.yaml")

# What the reference's `permissions_get` returns for its simulated profile.
REFERENCE_PERMISSIONS: dict[str, Any] = {
    "user_groups": {
        "root": {
            "allowed_plans": [None],
            "forbidden_plans": [":^_"],
            "allowed_devices": [None],
            "forbidden_devices": [":^_:?.*"],
            "allowed_functions": [None],
            "forbidden_functions": [":^_"],
        },
        "primary": {
            "allowed_plans": [":.*"],
            "forbidden_plans": [None],
            "allowed_devices": [":?.*:depth=5"],
            "forbidden_devices": [None],
            "allowed_functions": ["function_sleep", ":^func_for_test"],
        },
        "test_user": {
            "allowed_plans": [":^count", ":scan$"],
            "forbidden_plans": [":^adaptive_scan$", ":^inner_product"],
            "allowed_devices": [":^det:?.*", ":^motor:?.*", ":^sim_bundle_A:?.*"],
            "forbidden_devices": [":^det[3-5]$:?.*", ":^motor\\d+$:?.*"],
            "allowed_functions": [
                ":element$",
                ":elements$",
                "function_sleep",
                "clear_buffer",
                ":^unit_test.*$",
            ],
            "forbidden_functions": [":^_"],
        },
    }
}


def tree(*names: str) -> dict[str, Any]:
    """A device tree holding the given dotted names (all plain readable devices)."""
    root: dict[str, Any] = {}
    for name in names:
        level = root
        for part in name.split("."):
            node = level.setdefault(part, {"is_readable": True})
            level = node.setdefault("components", {})
    return root


def selects(pattern: str, name: str) -> bool:
    return tuple(name.split(".")) in select_devices(parse_device_pattern(pattern), tree(name))


def with_groups(**groups: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, list[str | None]] = {"allowed_plans": [None], "allowed_devices": [None]}
    root["allowed_functions"] = [None]
    root |= {"forbidden_plans": [":^_"], "forbidden_devices": [":^_:?.*"]}
    return {"user_groups": {"root": root, **groups}}


# ----- loading -----


def test_the_reference_sample_file_loads_unchanged() -> None:
    assert PERMISSIONS == REFERENCE_PERMISSIONS


def test_a_dict_is_validated_and_copied() -> None:
    loaded = load_permissions(REFERENCE_PERMISSIONS)
    assert loaded == REFERENCE_PERMISSIONS
    assert loaded["user_groups"] is not REFERENCE_PERMISSIONS["user_groups"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user_groups: {primary: {}}", "user_groups: the required group 'root' is missing"),
        ("[1, 2]", "user group permissions must be a mapping, got list"),
        ("user_groups: {root: {}}\nextra: 1", "unknown key 'extra' in user group permissions"),
        ("user_groups: [root]", "user_groups: must be a mapping of group names"),
        (
            "user_groups: {root: {allowed_plan: [null]}}",
            "user_groups.root: unknown key 'allowed_plan'",
        ),
        ("user_groups: {root: null}", "user_groups.root: must be a mapping, got NoneType"),
        (
            "user_groups: {root: {allowed_plans: ':.*'}}",
            "user_groups.root.allowed_plans: must be a list",
        ),
        (
            "user_groups: {root: {allowed_plans: [5]}}",
            "allowed_plans[0]: must be a string, got int",
        ),
        (
            "user_groups: {root: {forbidden_plans: [a, null]}}",
            "[1]: null is allowed only as the first",
        ),
        (
            "user_groups: {root: {allowed_plans: [':']}}",
            "allowed_plans[0]: empty regular expression",
        ),
        ("user_groups: {root: {allowed_plans: ['a.b']}}", "a plan or function name has no dots"),
        (
            "user_groups: {root: {allowed_plans: ['^count$']}}",
            "is not a valid name (patterns start",
        ),
        (
            "user_groups: {root: {allowed_plans: [':a:b']}}",
            "a plan or function pattern has only one",
        ),
        (
            "user_groups: {root: {allowed_functions: ['__READABLE__:x']}}",
            "prefixes are not allowed",
        ),
        ("user_groups: {root: {1: x}}", "user_groups.root: unknown key 1"),
        ("user_groups: {root: {}, '': {}}", "group names must be non-empty strings"),
        ("user_groups: {root: {allowed_plans: [null]", "user group permissions are not valid YAML"),
    ],
)
def test_load_rejects_a_malformed_file_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        load_permissions(text)
    assert message in info.value.msg


def test_an_invalid_regex_is_reported_with_its_key_path() -> None:
    text = "user_groups: {root: {}, primary: {allowed_plans: [count, ':^a', ':(']}}"
    with pytest.raises(BadRequest) as info:
        load_permissions(text)
    assert info.value.msg.startswith(
        "user_groups.primary.allowed_plans[2]: invalid regular expression '('"
    )


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("__UNKNOWN__:^det", "device type '__UNKNOWN__' is not supported"),
        (":^det:", "has empty components"),
        (":", "has empty components"),
        (":-", "has empty components"),
        (":^det:depth=2", "'depth=N' must follow a ':?' full-name expression"),
        (":?^det:^val$", "a ':?' full-name expression must be the last component"),
        (":?^det$:depth=0", "depth must be a positive integer"),
        (":?^det$:depth=a", "incorrect depth specification 'depth=a'"),
        (":^det[", "invalid regular expression '^det['"),
        ("det1..val", "is not a valid name"),
        (".det1", "is not a valid name"),
        ("^det1$", "is not a valid name"),
    ],
)
def test_load_rejects_a_bad_device_pattern(pattern: str, message: str) -> None:
    text = yaml.safe_dump({"user_groups": {"root": {"forbidden_devices": [pattern]}}})
    with pytest.raises(BadRequest) as info:
        load_permissions(text)
    assert info.value.msg.startswith("user_groups.root.forbidden_devices[0]: ")
    assert message in info.value.msg


def test_load_file_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        BadRequest, match=r"cannot read user group permissions from .*missing\.yaml"
    ):
        load_permissions_file(tmp_path / "missing.yaml")


# ----- device pattern semantics -----


@pytest.mark.parametrize(
    ("name", "pattern", "selected"),
    [
        # literal names match exactly, dotted names select one component
        ("det1", "det1", True),
        ("det1", "det", False),
        ("det1.val", "det1.val", True),
        ("det1.val", "det1", False),
        ("det1", "det1.val", False),
        # ':regex' is searched in one name component per level
        ("mydetector", ":det", True),
        ("mydetector", ":^det$", False),
        ("det1.val", ":^det", False),
        ("det1", ":^det:^val$", True),
        ("det1.val", ":^det:^val$", True),
        ("det1.val2", ":^det:^val$", False),
        ("det1.val.x", ":^det:^val$", False),
        ("stage.mtrs.x", ":^st:+^mt:^x$", True),
        # ':-regex' matches a level without selecting names that end there
        ("stage", ":-^st:^mt", False),
        ("stage.mtrs", ":-^st:^mt", True),
        ("stage.mtrs", ":-^st:-^mt", True),
        # ':?regex' matches the remaining dotted name over the whole subtree
        ("simval", ":?^sim.*val$", True),
        ("sim_stage.det1.val", ":?^sim.*val$", True),
        ("sim_stage.det1.x", ":?^sim.*val$", False),
        ("stage_A", ":^stage_A$:?.*val$", True),
        ("stage_A.dets.det1.val", ":^stage_A$:?.*val$", True),
        ("stage_A", ":-^stage_A$:?.*val$", False),
        ("stage_B.val", ":^stage_A$:?.*val$", False),
        # ':depth=N' limits how many levels ':?' reaches
        ("det_val", ":?.*val$:depth=1", True),
        ("det.val", ":?.*val$:depth=1", False),
        ("det.val", ":?.*val$:depth=2", True),
        ("det.sub.val", ":?.*val$:depth=2", False),
        ("stage_A.det1.val", ":^stage_A$:?.*val$:depth=2", True),
        ("stage_A.dets.det1.val", ":^stage_A$:?.*val$:depth=2", False),
    ],
)
def test_device_patterns_select_names(name: str, pattern: str, selected: bool) -> None:
    assert selects(pattern, name) is selected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("__READABLE__:^(det1|motor|flyer1)$", {"det1", "motor"}),
        ("__MOVABLE__:^(det1|motor|flyer1)$", {"motor"}),
        ("__FLYABLE__:^(det1|motor|flyer1)$", {"flyer1"}),
        ("__DETECTOR__:^(det1|motor|flyer1)$", {"det1"}),
        ("__MOTOR__:^(det1|motor|flyer1)$", {"motor"}),
        ("__MOTOR__:^det1$:?.*", {"det1.Imax", "det1.val"}),
    ],
)
def test_device_type_prefixes_filter_by_the_description_flags(
    pattern: str, expected: set[str]
) -> None:
    selected = select_devices(parse_device_pattern(pattern), DEVICES)
    assert {".".join(path) for path in selected} == expected


def test_a_literal_selects_nothing_when_the_device_does_not_exist() -> None:
    assert select_devices(parse_device_pattern("det1.nothing"), DEVICES) == set()


# ----- allowed lists -----


def test_root_hides_private_plans_and_devices() -> None:
    plans, devices = allowed_lists(PLANS, DEVICES, PERMISSIONS)["root"]
    assert "_private_plan" not in plans and "count" in plans
    assert "_hidden_det" not in devices and "det1" in devices


def test_primary_gets_every_plan_and_device_to_depth_five() -> None:
    plans, devices = allowed_lists(PLANS, DEVICES, PERMISSIONS)["primary"]
    assert set(plans) == set(PLANS) - {"_private_plan"}
    names = device_names(devices)
    assert "deep.l2.l3.l4.l5" in names and "deep.l2.l3.l4.l5.l6" not in names
    assert "components" not in (find_device("deep.l2.l3.l4.l5", devices) or {})
    assert {"det1.val", "sim_bundle_A.dets.det_A.val", "motor1", "flyer1"} <= names


def test_test_user_gets_the_reference_subset() -> None:
    plans, devices = allowed_lists(PLANS, DEVICES, PERMISSIONS)["test_user"]
    assert sorted(plans) == ["count", "count_bundle_test", "countdown", "scan"]
    assert sorted(devices) == ["det1", "det2", "motor", "sim_bundle_A"]
    assert "sim_bundle_A.mtrs.x" in device_names(devices)


def test_plan_descriptions_are_kept_whole_and_copied() -> None:
    plans, _ = allowed_lists(PLANS, DEVICES, PERMISSIONS)["test_user"]
    assert plans["count"] == PLANS["count"]
    plans["count"]["parameters"].clear()
    assert PLANS["count"]["parameters"]


def test_device_descriptions_are_copied() -> None:
    _, devices = allowed_lists(PLANS, DEVICES, PERMISSIONS)["primary"]
    devices["det1"]["components"].clear()
    assert DEVICES["det1"]["components"]


def test_root_filter_applies_before_the_group_filter() -> None:
    perms = with_groups(ops={"allowed_plans": ["_private_plan"], "allowed_devices": [None]})
    plans, devices = allowed_lists(PLANS, DEVICES, perms)["ops"]
    assert plans == {}
    assert "_hidden_det" not in devices and "det1" in devices


def test_missing_allowed_lists_allow_nothing() -> None:
    plans, devices = allowed_lists(PLANS, DEVICES, with_groups(empty={}))["empty"]
    assert plans == {} and devices == {}


def test_an_empty_allowed_list_allows_nothing() -> None:
    group: dict[str, list[str]] = {"allowed_plans": [], "allowed_devices": []}
    plans, devices = allowed_lists(PLANS, DEVICES, with_groups(g=group))["g"]
    assert plans == {} and devices == {}


@pytest.mark.parametrize("forbidden", [None, [None], [None, ":.*"], []])
def test_missing_or_null_forbidden_lists_forbid_nothing(forbidden: list[Any] | None) -> None:
    group: dict[str, Any] = {"allowed_plans": [":.*"], "allowed_devices": [":.*"]}
    if forbidden is not None:
        group |= {"forbidden_plans": forbidden, "forbidden_devices": forbidden}
    plans, devices = allowed_lists(PLANS, DEVICES, with_groups(g=group))["g"]
    assert set(plans) == set(PLANS) - {"_private_plan"}
    assert set(devices) == set(DEVICES) - {"_hidden_det"}


def test_null_first_allows_everything_and_ignores_the_rest() -> None:
    group = {"allowed_plans": [None, "count"], "allowed_devices": [None, "det1"]}
    plans, devices = allowed_lists(PLANS, DEVICES, with_groups(g=group))["g"]
    assert "scan" in plans and "motor.setpoint" in device_names(devices)


def test_a_top_level_regex_keeps_devices_without_components() -> None:
    group = {"allowed_devices": [":^det"]}
    _, devices = allowed_lists(PLANS, DEVICES, with_groups(g=group))["g"]
    assert sorted(devices) == ["det1", "det2", "det4"]
    assert device_names(devices) == {"det1", "det2", "det4"}


def test_a_component_allowed_alone_keeps_its_parent_marked_excluded() -> None:
    group = {"allowed_devices": ["det1.val", ":-^sim_bundle_A$:-^dets:^det_A$"]}
    _, devices = allowed_lists(PLANS, DEVICES, with_groups(g=group))["g"]
    assert devices["det1"]["excluded"] is True
    assert list(devices["det1"]["components"]) == ["val"]
    assert device_names(devices) == {"det1.val", "sim_bundle_A.dets.det_A"}
    assert find_device("det1", devices) is None
    assert find_device("det1.val", devices) == DEVICES["det1"]["components"]["val"]
    assert find_device("sim_bundle_A.dets", devices) is None


def test_a_forbidden_component_leaves_the_rest_of_the_device() -> None:
    group = {"allowed_devices": [":?.*"], "forbidden_devices": ["det1.val", ":-^motor$:^setpoint$"]}
    _, devices = allowed_lists(PLANS, DEVICES, with_groups(g=group))["g"]
    names = device_names(devices)
    assert {"det1", "det1.Imax", "motor", "motor.readback"} <= names
    assert "det1.val" not in names and "motor.setpoint" not in names


def test_a_device_excluded_by_root_stays_excluded_for_every_group() -> None:
    perms = with_groups(g={"allowed_devices": ["det1.val"]})
    perms["user_groups"]["root"]["allowed_devices"] = ["det1.val"]
    lists = allowed_lists(PLANS, DEVICES, perms)
    for group in ("root", "g"):
        devices = lists[group][1]
        assert devices["det1"]["excluded"] is True
        assert device_names(devices) == {"det1.val"}
    perms["user_groups"]["g"]["allowed_devices"] = [":?.*"]
    assert device_names(allowed_lists(PLANS, DEVICES, perms)["g"][1]) == {"det1.val"}


def test_allowed_lists_reject_invalid_permissions() -> None:
    perms = copy.deepcopy(REFERENCE_PERMISSIONS)
    perms["user_groups"]["primary"]["allowed_devices"] = [":?.*:depth=0"]
    with pytest.raises(BadRequest, match=r"user_groups\.primary\.allowed_devices\[0\]: depth"):
        allowed_lists(PLANS, DEVICES, perms)


def test_find_device_refuses_unknown_names() -> None:
    assert find_device("det1.nothing", DEVICES) is None
    assert find_device("nothing", DEVICES) is None
    assert find_device("det1..val", DEVICES) is None
    assert find_device("motor1.readback", DEVICES) is None


# ----- functions -----


@pytest.mark.parametrize(
    ("name", "group", "allowed"),
    [
        ("function_sleep", "primary", True),
        ("func_for_test_2", "primary", True),
        ("clear_buffer", "primary", False),
        ("clear_buffer", "test_user", True),
        ("add_element", "test_user", True),
        ("unit_test_x", "test_user", True),
        ("_element", "test_user", False),
        ("anything", "root", True),
        ("_private", "root", False),
        ("function_sleep", "unknown_group", False),
    ],
)
def test_function_allowed_follows_the_groups_lists(name: str, group: str, allowed: bool) -> None:
    assert function_allowed(name, group, PERMISSIONS) is allowed


def test_root_forbids_functions_for_every_group() -> None:
    perms = with_groups(ops={"allowed_functions": [":.*"]})
    perms["user_groups"]["root"]["forbidden_functions"] = [":^_"]
    assert function_allowed("run", "ops", perms) is True
    assert function_allowed("_secret", "ops", perms) is False


def test_a_group_without_allowed_functions_may_run_none() -> None:
    assert function_allowed("function_sleep", "g", with_groups(g={})) is False
