"""Gated user groups and their auto-approve rules, from the permissions file (ADR 30).

A group with a `proposals` key is gated: its items wait for review as proposals. The key is
`true`, or a mapping whose `auto_approve` lists rules; an item that matches one of them goes
to the queue at once. A rule matches when every condition it states holds:

    proposals:
      auto_approve:
        - plans: [count, ":^rel_"]        # the plan's name (a name, or `:regex`)
          devices: [":^det\\d?$", det]    # every device the item names matches one
          parameters:                     # bounds on the plan's parameters
            num: {min: 1, max: 10}        # (positional arguments bound by the plan's
            delay: {max: 1.0}             #  signature; an absent one takes its default)
            detectors: {values: [[det1], [det2]]}

Numbers in a list (a `scan`'s `args`: motors and positions) are each checked against
`min`/`max`, names in it skipped; `values` lists the values allowed as a whole. Pure logic, no I/O.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from qserver.errors import BadRequest

BOUND_KEYS = ("min", "max", "values")
RULE_KEYS = ("plans", "devices", "parameters")
Pattern = str | re.Pattern[str]


def _pattern(text: object, where: str) -> Pattern:
    if not isinstance(text, str) or not text or text == ":":
        raise BadRequest(f"{where}: must be a name or ':regex', got {text!r}")
    if not text.startswith(":"):
        return text
    try:
        return re.compile(text[1:])
    except re.error as e:
        raise BadRequest(f"{where}: invalid regular expression {text[1:]!r}: {e}") from None


def _matches(name: str, patterns: tuple[Pattern, ...]) -> bool:
    return any(name == p if isinstance(p, str) else p.search(name) for p in patterns)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Bound:
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None

    def holds(self, value: Any) -> bool:
        if self.values is not None and value not in self.values:
            return False
        if self.min is None and self.max is None:
            return True
        # In a list (a scan's `*args`: motors and positions) names are skipped.
        numbers = (
            [v for v in value if not isinstance(v, str)] if isinstance(value, list) else [value]
        )
        if not numbers or not all(_number(n) for n in numbers):
            return False
        return all(
            (self.min is None or n >= self.min) and (self.max is None or n <= self.max)
            for n in numbers
        )


@dataclass(frozen=True)
class Rule:
    index: int
    plans: tuple[Pattern, ...] | None = None
    devices: tuple[Pattern, ...] | None = None
    parameters: tuple[tuple[str, Bound], ...] = ()

    def describe(self) -> str:
        return f"auto-approve rule {self.index + 1}"


def _bound(body: object, where: str) -> Bound:
    if not isinstance(body, Mapping):
        raise BadRequest(f"{where}: must be a mapping of {', '.join(BOUND_KEYS)}")
    unknown = [k for k in body if k not in BOUND_KEYS]
    if unknown:
        raise BadRequest(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(BOUND_KEYS)})")
    for k in ("min", "max"):
        if k in body and not _number(body[k]):
            raise BadRequest(f"{where}.{k}: must be a number, got {body[k]!r}")
    values = body.get("values")
    if values is not None and not isinstance(values, list):
        raise BadRequest(f"{where}.values: must be a list")
    return Bound(body.get("min"), body.get("max"), tuple(values) if values is not None else None)


def _names(body: object, where: str) -> tuple[Pattern, ...]:
    if not isinstance(body, list) or not body:
        raise BadRequest(f"{where}: must be a non-empty list of names or ':regex'")
    return tuple(_pattern(p, f"{where}[{n}]") for n, p in enumerate(body))


def parse_rule(body: object, index: int, where: str) -> Rule:
    if not isinstance(body, Mapping) or not body:
        raise BadRequest(f"{where}: must be a mapping with {', '.join(RULE_KEYS)}")
    unknown = [k for k in body if k not in RULE_KEYS]
    if unknown:
        raise BadRequest(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(RULE_KEYS)})")
    params = body.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise BadRequest(f"{where}.parameters: must be a mapping of parameter names to bounds")
    return Rule(
        index=index,
        plans=_names(body["plans"], f"{where}.plans") if "plans" in body else None,
        devices=_names(body["devices"], f"{where}.devices") if "devices" in body else None,
        parameters=tuple((str(k), _bound(v, f"{where}.parameters.{k}")) for k, v in params.items()),
    )


def parse_gate(body: object, where: str) -> tuple[Rule, ...] | None:
    """A group's `proposals` value: None if not gated, else its rules (maybe none)."""
    if body is None or body is False:
        return None
    if body is True:
        return ()
    if not isinstance(body, Mapping):
        raise BadRequest(f"{where}: must be true, false or a mapping with 'auto_approve'")
    unknown = [k for k in body if k != "auto_approve"]
    if unknown:
        raise BadRequest(f"{where}: unknown key {unknown[0]!r} (expected 'auto_approve')")
    rules = body.get("auto_approve") or []
    if not isinstance(rules, list):
        raise BadRequest(f"{where}.auto_approve: must be a list of rules")
    return tuple(parse_rule(r, n, f"{where}.auto_approve[{n}]") for n, r in enumerate(rules))


def check_gate(group: str, body: object) -> None:
    """Validate a group's `proposals` value (BadRequest naming the place if wrong)."""
    where = f"user_groups.{group}.proposals"
    if group == "root" and parse_gate(body, where) is not None:
        raise BadRequest(f"{where}: the group 'root' cannot be gated (it applies to every group)")
    parse_gate(body, where)


def gate_of(permissions: Mapping[str, Any] | None, group: str) -> tuple[Rule, ...] | None:
    """The rules of `group` if it is gated, else None."""
    groups = (permissions or {}).get("user_groups") or {}
    body = groups.get(group)
    if not isinstance(body, Mapping):
        return None
    return parse_gate(body.get("proposals"), f"user_groups.{group}.proposals")


# ----- matching an item -----


def _default(param: Mapping[str, Any]) -> tuple[bool, Any]:
    if "default" not in param:
        return False, None
    try:
        return True, ast.literal_eval(str(param["default"]))
    except (ValueError, SyntaxError):
        return False, None


def bind(args: list[Any], kwargs: Mapping[str, Any], plan: Mapping[str, Any]) -> dict[str, Any]:
    """The item's values by parameter name, positional ones bound by the plan's signature."""
    out: dict[str, Any] = {}
    rest = list(args)
    for param in plan.get("parameters") or []:
        name, kind = param.get("name"), (param.get("kind") or {}).get("name")
        if kind == "VAR_POSITIONAL":
            out[name] = rest
            rest = []
        elif kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD") and rest:
            out[name] = rest.pop(0)
    out.update(kwargs)
    for param in plan.get("parameters") or []:
        name = param.get("name")
        if name not in out:
            found, value = _default(param)
            if found:
                out[name] = value
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)


def devices_named(args: list[Any], kwargs: Mapping[str, Any], devices: set[str]) -> set[str]:
    """The names in the item's parameters that are devices of the group's allowed list."""
    return {s for s in _strings([args, dict(kwargs)]) if s in devices}


def rule_matches(
    rule: Rule,
    name: str,
    args: list[Any],
    kwargs: Mapping[str, Any],
    plan: Mapping[str, Any],
    devices: set[str],
) -> bool:
    if rule.plans is not None and not _matches(name, rule.plans):
        return False
    if rule.devices is not None:
        named = devices_named(args, kwargs, devices)
        if not all(_matches(d, rule.devices) for d in named):
            return False
    values = bind(args, kwargs, plan)
    for pname, bound in rule.parameters:
        if pname not in values or not bound.holds(values[pname]):
            return False
    return True


def first_match(
    rules: tuple[Rule, ...],
    name: str,
    args: list[Any],
    kwargs: Mapping[str, Any],
    plan: Mapping[str, Any],
    devices: set[str],
) -> Rule | None:
    """The first rule that lets the item through, if any."""
    for rule in rules:
        if rule_matches(rule, name, args, kwargs, plan, devices):
            return rule
    return None
