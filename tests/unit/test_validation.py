"""Plan items are checked against a group's allowed plans and devices, from descriptions only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qserver.errors import BadRequest
from qserver.plan_tools.annotations import AnyType, parse_annotation
from qserver.plan_tools.permissions import allowed_lists, load_permissions_file
from qserver.plan_tools.validation import validate_instruction, validate_plan
from tests.conftest import packages_loaded

DATA = Path(__file__).parent / "data"
SAMPLE = yaml.safe_load((DATA / "existing_plans_and_devices.yaml").read_text())
LISTS = allowed_lists(
    SAMPLE["existing_plans"],
    SAMPLE["existing_devices"],
    load_permissions_file(DATA / "user_group_permissions.yaml"),
)


def plan(name: str, *args: Any, group: str = "primary", **kwargs: Any) -> dict[str, Any]:
    """Validate a plan item for a group and return it."""
    item: dict[str, Any] = {"item_type": "plan", "name": name, "args": list(args)}
    if kwargs:
        item["kwargs"] = kwargs
    validate_plan(item, *LISTS[group])
    return item


def refused(name: str, *args: Any, group: str = "primary", **kwargs: Any) -> str:
    """The message of the refusal of a plan item."""
    with pytest.raises(BadRequest) as info:
        plan(name, *args, group=group, **kwargs)
    return info.value.msg


def typed(annotation: str | dict[str, Any], value: Any, group: str = "primary") -> None:
    """Validate `value` for the only parameter `x` of a plan annotated with `annotation`."""
    if isinstance(annotation, str):
        annotation = {"type": annotation}
    param = {"name": "x", "kind": {"name": "POSITIONAL_OR_KEYWORD", "value": 1}}
    plans, devices = LISTS[group]
    plans = plans | {"p": {"name": "p", "parameters": [param | {"annotation": annotation}]}}
    validate_plan({"item_type": "plan", "name": "p", "args": [value]}, plans, devices)


def typed_refusal(annotation: str | dict[str, Any], value: Any, group: str = "primary") -> str:
    with pytest.raises(BadRequest) as info:
        typed(annotation, value, group)
    return info.value.msg


# ----- the plan and its arguments -----


def test_count_accepts_allowed_detectors_and_typed_keywords() -> None:
    plan("count", ["det1", "det2"], num=10, delay=0.5, md={"sample": "Si"})
    plan("count", detectors=["det1"], num=None, delay=[1, 2.5])


def test_count_accepts_allowed_components_by_dotted_name() -> None:
    plan("count", ["det1.val", "sim_bundle_A.dets.det_A.val"])


def test_an_unknown_plan_is_refused_with_the_reference_message() -> None:
    assert refused("nonexistent_plan") == (
        "Plan 'nonexistent_plan' is not in the list of allowed plans."
    )


def test_a_plan_outside_the_group_is_refused() -> None:
    plan("move_then_count", ["motor"], ["det1"], [1.0])
    msg = refused("move_then_count", ["motor"], ["det1"], [1.0], group="test_user")
    assert msg == "Plan 'move_then_count' is not in the list of allowed plans."


def test_a_plan_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"^Plan '5' is not in the list of allowed plans\.$"):
        validate_plan({"item_type": "plan", "name": 5}, *LISTS["primary"])


def test_an_item_without_a_name_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"^The item has no 'name'$"):
        validate_plan({"item_type": "plan"}, *LISTS["primary"])


def test_count_rejects_a_missing_detectors_argument() -> None:
    assert refused("count") == "missing a required argument: 'detectors'"


def test_count_rejects_an_unknown_keyword() -> None:
    assert refused("count", ["det1"], bogus_kw=1) == "got an unexpected keyword argument 'bogus_kw'"


def test_count_rejects_an_argument_given_twice() -> None:
    assert refused("count", ["det1"], detectors=["det2"]) == (
        "multiple values for argument 'detectors'"
    )


def test_count_rejects_too_many_positional_arguments() -> None:
    assert refused("count", ["det1"], 1, 2, 3, 4) == "too many positional arguments"


def test_args_must_be_a_list_and_kwargs_a_dict() -> None:
    with pytest.raises(BadRequest, match=r"^'args' must be a list, got str 'det1'$"):
        validate_plan({"name": "count", "args": "det1"}, *LISTS["primary"])
    with pytest.raises(BadRequest, match=r"^'kwargs' must be a dict, got list \[1\]$"):
        validate_plan({"name": "count", "args": [["det1"]], "kwargs": [1]}, *LISTS["primary"])


def test_args_and_kwargs_may_be_omitted() -> None:
    validate_plan({"name": "sleep_plan"}, *LISTS["primary"])
    validate_plan({"name": "count", "kwargs": {"detectors": ["det1"]}}, *LISTS["primary"])


# ----- types -----


def test_count_rejects_a_string_for_num() -> None:
    assert (
        refused("count", ["det1"], num="ten")
        == "Parameter 'num' must be int or None, got str 'ten'"
    )


def test_count_rejects_a_fractional_num() -> None:
    assert (
        refused("count", ["det1"], num=1.5) == "Parameter 'num' must be int or None, got float 1.5"
    )


def test_count_rejects_a_bool_for_num() -> None:
    assert refused("count", ["det1"], num=True) == (
        "Parameter 'num' must be int or None, got bool True"
    )


def test_count_rejects_a_string_for_detectors() -> None:
    assert refused("count", "det1") == (
        "Parameter 'detectors': 'str' instances are not allowed as a Sequence value"
        " (Sequence[__READABLE__])"
    )


def test_count_rejects_an_unknown_detector() -> None:
    assert refused("count", ["det1", "det9"]) == (
        "Parameter 'detectors': 'det9' is not an allowed device (Sequence[__READABLE__])"
    )


def test_count_rejects_a_device_the_group_may_not_use() -> None:
    plan("count", ["det4"])
    assert refused("count", ["det4"], group="test_user") == (
        "Parameter 'detectors': 'det4' is not an allowed device (Sequence[__READABLE__])"
    )


def test_count_rejects_components_deeper_than_the_group_allows() -> None:
    plan("count", ["deep.l2.l3.l4.l5"])
    assert "'deep.l2.l3.l4.l5.l6' is not an allowed device" in refused(
        "count", ["deep.l2.l3.l4.l5.l6"]
    )


def test_count_rejects_a_device_that_is_not_readable() -> None:
    assert refused("count", ["flyer1"]) == (
        "Parameter 'detectors': 'flyer1' is not a readable device (Sequence[__READABLE__])"
    )


def test_count_accepts_an_int_or_a_list_of_numbers_for_a_float_delay() -> None:
    plan("count", ["det1"], delay=2)
    plan("count", ["det1"], delay=[0.1, 2])


def test_count_rejects_a_string_for_delay() -> None:
    assert refused("count", ["det1"], delay="abc") == (
        "Parameter 'delay' must be float or Iterable[float], got str 'abc'"
    )


def test_count_rejects_metadata_that_is_not_a_dict() -> None:
    assert refused("count", ["det1"], md="x") == (
        "Parameter 'md' must be dict[str, Any] or None, got str 'x'"
    )


def test_an_unannotated_parameter_accepts_any_value_and_unknown_names() -> None:
    plan("count", ["det1"], per_shot=["nodev", {"a": [1, None]}])


def test_sleep_plan_accepts_none_or_an_int_for_an_optional_int() -> None:
    plan("sleep_plan", None)
    plan("sleep_plan", 5)
    assert refused("sleep_plan", "5") == "Parameter 'time' must be int or None, got str '5'"


def test_a_list_reports_the_first_bad_item() -> None:
    assert refused("move_then_count", ["motor"], ["det1"], [1, "a"]) == (
        "Parameter 'positions': item 1 must be float, got str 'a' (List[float])"
    )


def test_a_list_of_movables_rejects_a_detector() -> None:
    assert refused("move_then_count", ["det1"], ["det1"], [1.0]) == (
        "Parameter 'motors': 'det1' is not a movable device (List[__MOVABLE__])"
    )


# ----- *args, **kwargs, device names -----


def test_scan_accepts_motors_and_numbers_in_args() -> None:
    plan("scan", ["det1"], "motor", -1, 1, "sim_bundle_A.mtrs.x", 0, 2, num=10)


def test_scan_rejects_an_unknown_device_name_in_args() -> None:
    assert refused("scan", ["det1"], "nodev", -1, 1, num=10) == (
        "Parameter 'args': 'nodev' is not an allowed device"
    )


def test_scan_rejects_a_forbidden_device_name_in_args() -> None:
    plan("scan", ["det1"], "motor", -1, 1, group="test_user")
    assert refused("scan", ["det1"], "motor1", -1, 1, group="test_user") == (
        "Parameter 'args': 'motor1' is not an allowed device"
    )


# `list_scan` as describe.py reports it (bluesky 1.15 annotates `*args` with one group).
LIST_SCAN = {
    "name": "list_scan",
    "parameters": [
        {
            "annotation": {"type": "collections.abc.Sequence[__READABLE__]"},
            "convert_device_names": True,
            "kind": {"name": "POSITIONAL_OR_KEYWORD", "value": 1},
            "name": "detectors",
        },
        {
            "annotation": {"type": "tuple[__MOVABLE__, list[float]]"},
            "convert_device_names": True,
            "kind": {"name": "VAR_POSITIONAL", "value": 2},
            "name": "args",
        },
        {"default": "None", "kind": {"name": "KEYWORD_ONLY", "value": 3}, "name": "md"},
    ],
}


def list_scan(*args: Any, annotation: str | None = None) -> None:
    """Validate `list_scan(*args)` as the primary group; `annotation` replaces that of `*args`."""
    desc: dict[str, Any] = LIST_SCAN
    if annotation is not None:
        params = [dict(p) for p in LIST_SCAN["parameters"]]  # type: ignore[attr-defined]
        params[1]["annotation"] = {"type": annotation}
        if "__" not in annotation:  # no device in it: describe.py would not set the flag
            del params[1]["convert_device_names"]
        desc = {**LIST_SCAN, "parameters": params}
    devices = LISTS["primary"][1]
    validate_plan({"name": "list_scan", "args": list(args)}, {"list_scan": desc}, devices)


def list_scan_refusal(*args: Any, annotation: str | None = None) -> str:
    with pytest.raises(BadRequest) as info:
        list_scan(*args, annotation=annotation)
    return info.value.msg


def test_list_scan_takes_motor_and_positions_pairs_in_the_flat_form() -> None:
    list_scan(["det1"], "motor", [1, 2])
    list_scan(["det1", "det2"], "motor", [1, 2.5, 3], "sim_bundle_A.mtrs.x", [0, 0, 1])
    list_scan(["det1"])  # no pairs at all: bluesky's own error, at run time


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (
            ["motor"],
            "Parameter 'args' takes its values in groups of 2 (tuple[__MOVABLE__, list[float]]), "
            "got 1 value: the last group is incomplete",
        ),
        (
            ["motor", [1, 2], "motor1"],
            "Parameter 'args' takes its values in groups of 2 (tuple[__MOVABLE__, list[float]]), "
            "got 3 values: the last group is incomplete",
        ),
        (
            [[1, 2], "motor"],
            "Parameter 'args': group 1 of tuple[__MOVABLE__, list[float]] "
            "(list [[1, 2], 'motor']): item 0 must be __MOVABLE__, got list [1, 2]",
        ),
        (
            ["motor", [1, 2], "nomotor", [3]],
            "Parameter 'args': group 2 of tuple[__MOVABLE__, list[float]] "
            "(list ['nomotor', [3]]): 'nomotor' is not an allowed device",
        ),
        (
            ["det1", [1, 2]],
            "Parameter 'args': group 1 of tuple[__MOVABLE__, list[float]] "
            "(list ['det1', [1, 2]]): 'det1' is not a movable device",
        ),
        (
            ["motor", [1, "a"]],
            "Parameter 'args': group 1 of tuple[__MOVABLE__, list[float]] "
            "(list ['motor', [1, 'a']]): item 1: item 1 must be float, got str 'a'",
        ),
        (
            ["motor", 5],
            "Parameter 'args': group 1 of tuple[__MOVABLE__, list[float]] "
            "(list ['motor', 5]): item 1 must be list[float], got int 5",
        ),
        (
            [["motor", [1, 2]]],  # one tuple per group is not how the plan is called
            "Parameter 'args' takes its values in groups of 2 (tuple[__MOVABLE__, list[float]]), "
            "got 1 value: the last group is incomplete",
        ),
    ],
)
def test_list_scan_refuses_a_bad_pair_naming_it(args: list[Any], msg: str) -> None:
    assert list_scan_refusal(["det1"], *args) == msg


def test_lists_made_by_the_reference_are_read_in_groups_too() -> None:
    """Its annotation lets any value be the motor; names must still be allowed devices."""
    loose = "tuple[__MOVABLE__ | typing.Any, list[typing.Any]]"
    list_scan(["det1"], "motor", [1, 2], "motor1", [3, 4], annotation=loose)
    assert list_scan_refusal(["det1"], "nomotor", [1], annotation=loose) == (
        "Parameter 'args': 'nomotor' is not an allowed device"
    )
    assert "groups of 2" in list_scan_refusal(["det1"], "motor", annotation=loose)


def test_any_var_positional_annotated_with_a_tuple_is_read_in_groups() -> None:
    list_scan(["det1"], 1, "a", 2, "b", annotation="tuple[int, str]")
    assert list_scan_refusal(["det1"], 1, 2, annotation="tuple[int, str]") == (
        "Parameter 'args': group 1 of tuple[int, str] (list [1, 2]): item 1 must be str, got int 2"
    )
    assert "groups of 3" in list_scan_refusal(["det1"], 1, annotation="tuple[int, int, int]")
    # A variadic tuple is not a group: each value is such a tuple.
    list_scan(["det1"], [1, 2], [3], annotation="tuple[int, ...]")


def test_var_keyword_values_are_checked_one_by_one() -> None:
    plan("countdown", 5, extra_a=1, extra_b=2)
    assert refused("countdown", 5, extra_a="x") == "Parameter 'extras' must be int, got str 'x'"


def test_custom_device_enums_accept_only_listed_and_allowed_names() -> None:
    plan("count_bundle_test", ["det1", "sim_bundle_A.dets.det_A"], mode="slow")
    assert refused("count_bundle_test", ["motor"]) == (
        "Parameter 'detectors': 'motor' is not one of the names allowed for DetList (List[DetList])"
    )
    assert refused("count_bundle_test", ["det4"], group="test_user") == (
        "Parameter 'detectors': 'det4' is not an allowed device (List[DetList])"
    )


def test_custom_string_enums_accept_only_listed_values() -> None:
    assert refused("count_bundle_test", ["det1"], mode="medium") == (
        "Parameter 'mode': 'medium' is not one of 'fast', 'slow' (Modes)"
    )


# ----- limits -----


@pytest.mark.parametrize(("npts", "ok"), [(1, True), (100, True), (0, False), (101, False)])
def test_countdown_enforces_min_and_max(npts: int, ok: bool) -> None:
    if ok:
        plan("countdown", npts)
    else:
        assert refused("countdown", npts) == (
            f"Parameter 'npts': value {npts} is out of range [1, 100]"
        )


def test_limits_apply_to_every_number_in_a_list() -> None:
    plan("countdown", 5, [0.0, 2.5])
    assert refused("countdown", 5, [1.0, -0.5]) == (
        "Parameter 'delays': value -0.5 is out of range [0.0, inf]"
    )


def test_a_max_alone_is_open_below() -> None:
    assert (
        refused("countdown", 5, a=11) == "Parameter 'extras': value 11 is out of range [-inf, 10]"
    )


# ----- meta and instructions -----


@pytest.mark.parametrize("meta", [{}, {"a": 1}, [], [{"a": 1}, {"b": 2}]])
def test_meta_may_be_a_dict_or_a_list_of_dicts(meta: Any) -> None:
    validate_plan({"name": "count", "args": [["det1"]], "meta": meta}, *LISTS["primary"])


@pytest.mark.parametrize(
    ("meta", "shown"), [("x", "str 'x'"), ([{"a": 1}, 2], "list [{'a': 1}, 2]"), (None, "None")]
)
def test_meta_of_another_type_is_refused(meta: Any, shown: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_plan({"name": "count", "args": [["det1"]], "meta": meta}, *LISTS["primary"])
    assert info.value.msg == f"'meta' must be a dict or a list of dicts, got {shown}"


def test_queue_stop_is_the_only_instruction() -> None:
    validate_instruction({"item_type": "instruction", "name": "queue_stop"})
    with pytest.raises(BadRequest) as info:
        validate_instruction({"item_type": "instruction", "name": "bogus"})
    assert info.value.msg == (
        "Unrecognized instruction: {'item_type': 'instruction', 'name': 'bogus'}"
    )


# ----- annotations -----

ACCEPTED = [
    ("int", 3),
    ("float", 3),
    ("float", 2.5),
    ("str", "text"),
    ("bool", False),
    ("None", None),
    ("NoneType", None),
    ("typing.Any", {"any": ["thing"]}),
    ("int | str", "a"),
    ("typing.Optional[int]", None),
    ("typing.Union[int, typing.List[str]]", ["a"]),
    ("list[int]", [1, 2]),
    ("typing.List[int]", []),
    ("list", [1, "a"]),
    ("collections.abc.Sequence[str]", ["a"]),
    ("typing.Sequence[float]", [1, 2.5]),
    ("typing.Iterable[int]", [1]),
    ("tuple[int, str]", [1, "a"]),
    ("typing.Tuple[int, ...]", [1, 2, 3]),
    ("dict[str, int]", {"a": 1}),
    ("typing.Dict[str, typing.Any]", {"a": [None]}),
    ("collections.abc.Mapping[str, float]", {"a": 1}),
    ("dict", {"a": "b"}),
    ("typing.Literal['a', 'b']", "b"),
    ("__DEVICE__", "det1.val"),
    ("__READABLE__", "motor"),
    ("__MOVABLE__", "motor.setpoint"),
    ("__FLYABLE__", "flyer1"),
    ("__PLAN__", "count"),
    ("__PLAN_OR_DEVICE__", "count"),
    ("__PLAN_OR_DEVICE__", "det1"),
    ("__CALLABLE__", "numpy.linspace"),
    ("bluesky.protocols.Readable", "det1"),
    ("typing.List[bluesky.protocols.Movable]", ["motor"]),
    ("collections.abc.Callable", "print"),
]

REFUSED = [
    ("int", 2.0, "Parameter 'x' must be int, got float 2.0"),
    ("int", False, "Parameter 'x' must be int, got bool False"),
    ("float", True, "Parameter 'x' must be float, got bool True"),
    ("float", "1.5", "Parameter 'x' must be float, got str '1.5'"),
    ("str", 1, "Parameter 'x' must be str, got int 1"),
    ("bool", 1, "Parameter 'x' must be bool, got int 1"),
    ("None", 0, "Parameter 'x' must be None, got int 0"),
    ("int | str", None, "Parameter 'x' must be int or str, got None"),
    ("typing.Union[int, None]", "a", "Parameter 'x' must be int or None, got str 'a'"),
    ("list[int]", (1, "a"), "Parameter 'x': item 1 must be int, got str 'a' (list[int])"),
    ("list[int]", "12", "Parameter 'x' must be list[int], got str '12'"),
    ("list[int]", {"a": 1}, "Parameter 'x' must be list[int], got dict {'a': 1}"),
    ("list[list[int]]", [[1], [2, None]], "Parameter 'x': item 1: item 1 must be int, got None"),
    (
        "typing.Iterable[float]",
        "abc",
        "Parameter 'x': 'str' instances are not allowed as a Sequence value (Iterable[float])",
    ),
    ("tuple[int, str]", [1], "Parameter 'x' must be tuple[int, str], got list [1]"),
    (
        "tuple[int, ...]",
        [1, "2"],
        "Parameter 'x': item 1 must be int, got str '2' (tuple[int, ...])",
    ),
    ("dict[str, int]", [], "Parameter 'x' must be dict[str, int], got list []"),
    ("dict[str, int]", {"a": "1"}, "Parameter 'x': value of 'a' must be int, got str '1'"),
    ("typing.Literal['a', 'b']", "c", "Parameter 'x': 'c' is not one of 'a', 'b'"),
    ("__DEVICE__", 5, "Parameter 'x' must be __DEVICE__, got int 5"),
    ("__DEVICE__", "count", "Parameter 'x': 'count' is not an allowed device (__DEVICE__)"),
    ("__MOVABLE__", "det1", "Parameter 'x': 'det1' is not a movable device (__MOVABLE__)"),
    ("__FLYABLE__", "det1", "Parameter 'x': 'det1' is not a flyable device (__FLYABLE__)"),
    ("__PLAN__", "det1", "Parameter 'x': 'det1' is not an allowed plan (__PLAN__)"),
    ("__PLAN__", "_private_plan", "Parameter 'x': '_private_plan' is not an allowed plan"),
    ("__PLAN_OR_DEVICE__", "nothing", "Parameter 'x': 'nothing' is not an allowed plan or device"),
    ("__CALLABLE__", "os.system('x')", "Parameter 'x': \"os.system('x')\" is not a valid name"),
    ("typing.Optional[__READABLE__]", "det9", "Parameter 'x': 'det9' is not an allowed device"),
]


@pytest.mark.parametrize(("annotation", "value"), ACCEPTED)
def test_annotations_accept_matching_values(annotation: str, value: Any) -> None:
    typed(annotation, value)


@pytest.mark.parametrize(("annotation", "value", "message"), REFUSED)
def test_annotations_refuse_other_values_naming_the_parameter(
    annotation: str, value: Any, message: str
) -> None:
    assert typed_refusal(annotation, value).startswith(message)


@pytest.mark.parametrize(
    "annotation",
    [
        "ophyd.Device",
        "list[ophyd.Device]",
        "typing.Callable[[int], int] | SomeClass",
        "not valid python (",
        "'forward_ref'",
        "typing.List[int, str]",
        "",
    ],
)
def test_unknown_annotations_accept_any_value(annotation: str) -> None:
    typed(annotation, object())
    typed(annotation, "nodev")


def test_annotations_are_never_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sys, "exit", lambda *a: calls.append("exit"))
    text = "__import__('sys').exit(3)"
    assert parse_annotation({"type": text}) == AnyType(text)
    typed(text, 1)
    assert calls == []


def test_a_missing_annotation_means_no_type() -> None:
    assert parse_annotation(None) is None
    assert parse_annotation({}) is None


def test_device_names_refused_by_the_group_fail_the_type() -> None:
    typed("__READABLE__", "det4")
    assert typed_refusal("__READABLE__", "det4", group="test_user") == (
        "Parameter 'x': 'det4' is not an allowed device (__READABLE__)"
    )


def custom_plan(*params: dict[str, Any]) -> dict[str, Any]:
    """The primary group's plans plus a plan `p` with the given parameter descriptions."""
    kind = {"name": "POSITIONAL_OR_KEYWORD", "value": 1}
    return LISTS["primary"][0] | {
        "p": {"name": "p", "parameters": [{"kind": kind} | p for p in params]}
    }


def test_convert_device_names_refuses_unknown_names_even_without_an_annotation() -> None:
    plans = custom_plan({"name": "dets", "convert_device_names": True})
    devices = LISTS["primary"][1]
    validate_plan({"name": "p", "args": [{"main": ["det1", "motor.setpoint"]}]}, plans, devices)
    with pytest.raises(BadRequest, match=r"^Parameter 'dets': 'nodev' is not an allowed device$"):
        validate_plan({"name": "p", "args": [{"main": ["det1", "nodev"]}]}, plans, devices)


def test_convert_plan_names_refuses_unknown_plan_names() -> None:
    devices = LISTS["primary"][1]
    plans = custom_plan({"name": "plans", "convert_plan_names": True})
    validate_plan({"name": "p", "args": [["count", "scan"]]}, plans, devices)
    with pytest.raises(BadRequest, match=r"^Parameter 'plans': 'det1' is not an allowed plan$"):
        validate_plan({"name": "p", "args": [["det1"]]}, plans, devices)
    both = custom_plan({"name": "x", "convert_plan_names": True, "convert_device_names": True})
    validate_plan({"name": "p", "args": [["count", "det1"]]}, both, devices)
    with pytest.raises(BadRequest, match=r"'zzz' is not an allowed plan or device$"):
        validate_plan({"name": "p", "args": [["count", "zzz"]]}, both, devices)


def test_numeric_limits_may_be_numbers_and_bad_limits_are_ignored() -> None:
    plans = custom_plan({"name": "a", "min": 0.5}, {"name": "b", "max": "lots"})
    devices = LISTS["primary"][1]
    validate_plan({"name": "p", "args": [1, 10**9]}, plans, devices)
    with pytest.raises(BadRequest, match=r"value 0\.25 is out of range \[0\.5, inf\]$"):
        validate_plan({"name": "p", "args": [{"k": [0.25]}, 1]}, plans, devices)


def test_an_invalid_plan_description_is_reported() -> None:
    plans = custom_plan({"name": "a", "default": "1"}, {"name": "b"})
    with pytest.raises(BadRequest, match=r"^The description of plan 'p' is invalid"):
        validate_plan({"name": "p", "args": [1, 2]}, plans, LISTS["primary"][1])


def test_deeply_nested_values_are_refused_without_crashing() -> None:
    value: list[Any] = []
    for _ in range(2000):
        value = [value]
    plans = custom_plan({"name": "x", "convert_device_names": True})
    with pytest.raises(BadRequest, match=r"^Parameter 'x' is nested too deeply$"):
        validate_plan({"name": "p", "args": [value]}, plans, LISTS["primary"][1])
    typed("list", value)  # a bare `list` does not look inside
    assert "nested too deeply to show" in typed_refusal("int", value)


def test_validation_stays_light() -> None:
    modules = "qserver.plan_tools.validation, qserver.plan_tools.permissions"
    assert packages_loaded(modules, ("bluesky", "ophyd", "nats")) == []
