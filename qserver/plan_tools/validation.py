"""Check a queue item against a user group's allowed plans and devices, from descriptions only.

Nothing is imported from bluesky or the startup code: the plan's signature is rebuilt from
its description, arguments are bound to it, and each bound value is checked against the
parameter's annotation (parsed, never evaluated), its device-name flags and its limits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from qserver.errors import BadRequest
from qserver.plan_tools.annotations import (
    Fixed,
    Spec,
    check,
    describe,
    name_problem,
    parse_annotation,
    shown,
)
from qserver.plan_tools.permissions import find_device

Parameter = inspect.Parameter
KINDS = (
    Parameter.POSITIONAL_ONLY,
    Parameter.POSITIONAL_OR_KEYWORD,
    Parameter.VAR_POSITIONAL,
    Parameter.KEYWORD_ONLY,
    Parameter.VAR_KEYWORD,
)
KIND_BY_NAME = {k.name: k for k in KINDS}
KIND_BY_VALUE = {int(k): k for k in KINDS}
MAX_NESTING = 64
# Defaults are never evaluated: a bound signature only needs to know that one exists.
HAS_DEFAULT = object()


class AllowedNames:
    """A user group's allowed plans and devices, as the annotation checker asks about them."""

    def __init__(self, plans: Mapping[str, Any], devices: Mapping[str, Any]) -> None:
        self._plans = plans
        self._devices = devices

    def device(self, name: str) -> Mapping[str, Any] | None:
        return find_device(name, self._devices)

    def is_plan(self, name: str) -> bool:
        return name in self._plans


def validate_instruction(item: Mapping[str, Any]) -> None:
    """Only `queue_stop` exists."""
    if item.get("name") != "queue_stop":
        raise BadRequest(f"Unrecognized instruction: {dict(item)!r}")


def validate_plan(
    item: Mapping[str, Any], plans_allowed: Mapping[str, Any], devices_allowed: Mapping[str, Any]
) -> None:
    """Raise BadRequest unless the plan item may be queued by the group these lists belong to."""
    if "name" not in item:
        raise BadRequest("The item has no 'name'")
    name = item["name"]
    if not isinstance(name, str) or name not in plans_allowed:
        raise BadRequest(f"Plan '{name}' is not in the list of allowed plans.")
    _check_meta(item)
    args, kwargs = _arguments(item)
    signature, params, specs = _prepared(name, plans_allowed[name])
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise BadRequest(str(exc)) from None
    names = AllowedNames(plans_allowed, devices_allowed)
    for pname, value in bound.arguments.items():
        param, spec = signature.parameters[pname], specs[pname]
        if param.kind is Parameter.VAR_POSITIONAL and isinstance(spec, Fixed):
            _check_groups(pname, value, params[pname], spec, names)
            continue
        _check_parameter(pname, _values(value, param), params[pname], spec, names)


# Signatures and parsed annotations per plan description, which do not change once the
# allowed lists are built: parsing them on every add cost ~0.1 ms. Keyed by identity; the
# description is kept in the entry so that its id cannot be reused while cached.
_PREPARED: dict[int, tuple[Mapping[str, Any], Prepared]] = {}
_PREPARED_MAX = 4096
Prepared = tuple[inspect.Signature, dict[str, Mapping[str, Any]], dict[str, "Spec | None"]]


def _prepared(name: str, description: Mapping[str, Any]) -> Prepared:
    entry = _PREPARED.get(id(description))
    if entry is not None and entry[0] is description:
        return entry[1]
    signature = _signature(name, description)
    params = {p["name"]: p for p in description.get("parameters") or []}
    specs = {pname: parse_annotation(p.get("annotation")) for pname, p in params.items()}
    if len(_PREPARED) >= _PREPARED_MAX:
        _PREPARED.clear()
    _PREPARED[id(description)] = (description, (signature, params, specs))
    return signature, params, specs


def _check_meta(item: Mapping[str, Any]) -> None:
    if "meta" not in item:
        return
    meta = item["meta"]
    if not (isinstance(meta, dict) or (isinstance(meta, list) and _all_dicts(meta))):
        raise BadRequest(f"'meta' must be a dict or a list of dicts, got {shown(meta)}")


def _all_dicts(values: list[Any]) -> bool:
    return all(isinstance(v, dict) for v in values)


def _arguments(item: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    args, kwargs = item.get("args", []), item.get("kwargs", {})
    if not isinstance(args, list):
        raise BadRequest(f"'args' must be a list, got {shown(args)}")
    if not isinstance(kwargs, dict):
        raise BadRequest(f"'kwargs' must be a dict, got {shown(kwargs)}")
    return args, kwargs


def _signature(name: str, description: Mapping[str, Any]) -> inspect.Signature:
    try:
        return inspect.Signature([_parameter(p) for p in description.get("parameters") or []])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequest(f"The description of plan '{name}' is invalid: {exc!r}") from None


def _parameter(param: Mapping[str, Any]) -> Parameter:
    kind_desc = param["kind"]
    kind = KIND_BY_NAME.get(kind_desc.get("name")) or KIND_BY_VALUE[kind_desc["value"]]
    variadic = kind in (Parameter.VAR_POSITIONAL, Parameter.VAR_KEYWORD)
    has_default = "default" in param and not variadic
    return Parameter(param["name"], kind, default=HAS_DEFAULT if has_default else Parameter.empty)


def _values(value: Any, param: Parameter) -> Iterator[Any]:
    """Each value to check: the extra arguments of `*args`/`**kwargs` one by one."""
    if param.kind is Parameter.VAR_POSITIONAL:
        yield from value
    elif param.kind is Parameter.VAR_KEYWORD:
        yield from value.values()
    else:
        yield value


def _check_parameter(
    pname: str,
    values: Iterator[Any],
    param: Mapping[str, Any],
    spec: Spec | None,
    names: AllowedNames,
) -> None:
    for value in values:
        if spec is not None:
            _check_type(pname, value, spec, names)
        _check_names(pname, value, param, names)
        _check_range(pname, value, param)


def _check_groups(
    pname: str, values: tuple[Any, ...], param: Mapping[str, Any], spec: Fixed, names: AllowedNames
) -> None:
    """`*args: tuple[A, B]` means flat values in groups (`motor, [1, 2], motor2, [3, 4]`).

    That is how bluesky's `list_scan` is called while its annotation names one group; a
    tuple per value would never reach the plan in the form it expects (ADR 15).
    """
    size = len(spec.items)
    if len(values) % size:
        raise BadRequest(
            f"Parameter '{pname}' takes its values in groups of {size} ({spec.label}), "
            f"got {len(values)} value{'' if len(values) == 1 else 's'}: "
            "the last group is incomplete"
        )
    for start in range(0, len(values), size):
        group = list(values[start : start + size])
        problem = check(group, spec, names)
        if problem is not None:
            where = f"group {start // size + 1} of {spec.label} ({shown(group)})"
            detail = problem.detail or f"must be {spec.label}"
            raise BadRequest(f"Parameter '{pname}': {where}: {detail}")
        _check_names(pname, group, param, names)
        _check_range(pname, group, param)


def _check_type(pname: str, value: Any, spec: Spec, names: AllowedNames) -> None:
    problem = check(value, spec, names)
    if problem is None:
        return
    if problem.detail:
        raise BadRequest(f"Parameter '{pname}': {problem.detail} ({spec.label})")
    raise BadRequest(f"Parameter '{pname}' must be {describe(spec)}, got {shown(value)}")


def _check_names(pname: str, value: Any, param: Mapping[str, Any], names: AllowedNames) -> None:
    """Refuse unknown names where the environment would convert names to objects."""
    devices, plans = bool(param.get("convert_device_names")), bool(param.get("convert_plan_names"))
    if not (devices or plans):
        return
    role = "plan or device" if devices and plans else "device" if devices else "plan"
    for text in _strings(pname, value):
        problem = name_problem(text, role, names)
        if problem:
            raise BadRequest(f"Parameter '{pname}': {problem}")


def _leaves(pname: str, value: Any, keep: Callable[[Any], bool], depth: int = 0) -> Iterator[Any]:
    """Every value inside lists, tuples and dict values (not keys) that `keep` accepts."""
    if depth > MAX_NESTING:
        raise BadRequest(f"Parameter '{pname}' is nested too deeply")
    if keep(value):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(pname, item, keep, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(pname, item, keep, depth + 1)


def _strings(pname: str, value: Any) -> Iterator[str]:
    """Every str inside the value (dict keys are never names)."""
    return _leaves(pname, value, lambda v: isinstance(v, str))


def _numbers(pname: str, value: Any) -> Iterator[int | float]:
    return _leaves(pname, value, lambda v: isinstance(v, int | float) and not isinstance(v, bool))


def _limit(value: Any) -> int | float | None:
    """A `min`/`max` from a description: a number or a numeric string; else no limit."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        for convert in (int, float):
            try:
                return convert(value)
            except ValueError:
                pass
    return None


def _check_range(pname: str, value: Any, param: Mapping[str, Any]) -> None:
    low, high = _limit(param.get("min")), _limit(param.get("max"))
    if low is None and high is None:
        return
    for number in _numbers(pname, value):
        if (low is not None and number < low) or (high is not None and number > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise BadRequest(f"Parameter '{pname}': value {number} is out of range {bounds}")
