"""User group permissions: load and check `user_group_permissions.yaml`, build allowed lists.

Plans and functions: a literal name matches exactly, `:regex` matches with `re.search`.
Devices: a literal (possibly dotted) name selects one node of the device tree; a pattern
`[TYPE]:re1:re2...` matches one name component per level (`:-re` matches but does not
select that level, `:+re` selects it, the default), and a last `:?re[:depth=N]` matches
the remaining dotted name over a subtree at most N levels deep. `TYPE` is one of
`__READABLE__`, `__MOVABLE__`, `__FLYABLE__`, `__DETECTOR__`, `__MOTOR__` and keeps only
devices with those flags. A node that is kept only to reach allowed components below it
carries `"excluded": true`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

import yaml

from qserver.errors import BadRequest

KINDS = ("plans", "devices", "functions")
GROUP_KEYS = tuple(f"{a}_{k}" for k in KINDS for a in ("allowed", "forbidden"))
GATE_KEY = "proposals"  # the group's items wait for review (qserver.plan_tools.proposal_rules)
NAME_RE = re.compile(r"[_a-zA-Z]([_a-zA-Z0-9.]*[_a-zA-Z0-9])?")

Flags = Mapping[str, Any]
DEVICE_TYPES: dict[str, Callable[[Flags], bool]] = {
    "": lambda d: True,
    "__READABLE__": lambda d: bool(d.get("is_readable")),
    "__MOVABLE__": lambda d: bool(d.get("is_movable")),
    "__FLYABLE__": lambda d: bool(d.get("is_flyable")),
    "__DETECTOR__": lambda d: bool(d.get("is_readable")) and not d.get("is_movable"),
    "__MOTOR__": lambda d: bool(d.get("is_readable")) and bool(d.get("is_movable")),
}

Path = tuple[str, ...]


@dataclass(frozen=True)
class Level:
    """One `:`-separated component of a device pattern."""

    regex: re.Pattern[str]
    select: bool = True
    full_name: bool = False
    depth: int | None = None


@dataclass(frozen=True)
class DevicePattern:
    """A parsed entry of an `allowed_devices`/`forbidden_devices` list."""

    literal: Path = ()
    levels: tuple[Level, ...] = ()
    device_type: str = ""


# ----- parsing patterns -----


def _compile(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from None


def _literal(text: str) -> Path:
    if not NAME_RE.fullmatch(text) or ".." in text:
        raise ValueError(f"{text!r} is not a valid name (patterns start with ':', e.g. ':^det')")
    return tuple(text.split("."))


def parse_name_pattern(text: str) -> str | re.Pattern[str]:
    """A plan or function name (str) or `:regex` (compiled); ValueError if invalid."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, got {type(text).__name__}")
    if not text.startswith(":"):
        if ":" in text:
            raise ValueError(f"device type prefixes are not allowed here: {text!r}")
        if len(_literal(text)) > 1:
            raise ValueError(f"a plan or function name has no dots: {text!r}")
        return text
    if not text[1:]:
        raise ValueError("empty regular expression")
    if ":" in text[1:]:
        raise ValueError(f"a plan or function pattern has only one component: {text!r}")
    return _compile(text[1:])


def _depth(text: str) -> int:
    value = text.removeprefix("depth=")
    if not value.isdigit():
        raise ValueError(f"incorrect depth specification {text!r}, expected 'depth=N'")
    if int(value) < 1:
        raise ValueError(f"depth must be a positive integer: {text!r}")
    return int(value)


def parse_device_pattern(text: str) -> DevicePattern:
    """Parse one device name or pattern; ValueError if invalid."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, got {type(text).__name__}")
    if ":" not in text:
        return DevicePattern(literal=_literal(text))
    device_type, *parts = text.split(":")
    if device_type not in DEVICE_TYPES:
        supported = ", ".join(t for t in DEVICE_TYPES if t)
        raise ValueError(f"device type {device_type!r} is not supported (supported: {supported})")
    if not parts or "" in parts:
        raise ValueError(f"pattern {text!r} has empty components")
    depth = None
    if parts[-1].startswith("depth="):
        depth = _depth(parts.pop())
        if not parts or not parts[-1].startswith("?"):
            raise ValueError(f"'depth=N' must follow a ':?' full-name expression: {text!r}")
    if any(p.startswith("?") for p in parts[:-1]):
        raise ValueError(f"a ':?' full-name expression must be the last component: {text!r}")
    levels = []
    for n, part in enumerate(parts):
        flag = part[0] if part[0] in "+-?" else ""
        body = part[len(flag) :]
        if not body:
            raise ValueError(f"pattern {text!r} has empty components")
        last = n == len(parts) - 1
        levels.append(
            Level(_compile(body), flag != "-" or last, flag == "?", depth if flag == "?" else None)
        )
    return DevicePattern(levels=tuple(levels), device_type=device_type)


# ----- loading and validating the permissions file -----


def _check_list(where: str, entries: object, parse: Callable[[str], object]) -> None:
    if entries is None:
        return
    if not isinstance(entries, list):
        raise BadRequest(f"{where}: must be a list or null, got {type(entries).__name__}")
    for n, entry in enumerate(entries):
        if entry is None:
            if n:
                raise BadRequest(f"{where}[{n}]: null is allowed only as the first element")
            continue
        try:
            parse(entry)
        except ValueError as exc:
            raise BadRequest(f"{where}[{n}]: {exc}") from None


def _check_group(name: object, body: object) -> None:
    where = f"user_groups.{name}"
    if not isinstance(name, str) or not name:
        raise BadRequest(f"user_groups: group names must be non-empty strings, got {name!r}")
    if not isinstance(body, dict):
        raise BadRequest(f"{where}: must be a mapping, got {type(body).__name__}")
    for key, entries in body.items():
        if key == GATE_KEY:
            from qserver.plan_tools.proposal_rules import check_gate

            check_gate(str(name), entries)
            continue
        if key not in GROUP_KEYS:
            raise BadRequest(
                f"{where}: unknown key {key!r} "
                f"(expected one of {', '.join((*GROUP_KEYS, GATE_KEY))})"
            )
        parse = parse_device_pattern if key.endswith("_devices") else parse_name_pattern
        _check_list(f"{where}.{key}", entries, parse)


def load_permissions(source: str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse (YAML text) and strictly validate user group permissions; a checked copy."""
    if isinstance(source, str):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise BadRequest(f"user group permissions are not valid YAML: {exc}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise BadRequest(f"user group permissions must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k != "user_groups"]
    if unknown:
        raise BadRequest(
            f"unknown key {unknown[0]!r} in user group permissions (expected 'user_groups')"
        )
    groups = data.get("user_groups")
    if not isinstance(groups, Mapping):
        raise BadRequest("user_groups: must be a mapping of group names to permissions")
    if "root" not in groups:
        raise BadRequest("user_groups: the required group 'root' is missing")
    for name, body in groups.items():
        _check_group(name, body)
    return copy.deepcopy(dict(data))


def load_permissions_file(path: str | PathLike[str]) -> dict[str, Any]:
    """Read and validate a `user_group_permissions.yaml` file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise BadRequest(
            f"cannot read user group permissions from {path}: {exc.strerror}"
        ) from None
    return load_permissions(text)


# ----- plans and functions -----


@dataclass(frozen=True)
class NameRules:
    """Compiled allowed/forbidden lists for plans or functions."""

    allow_all: bool
    allowed: tuple[str | re.Pattern[str], ...]
    forbidden: tuple[str | re.Pattern[str], ...]

    @classmethod
    def from_lists(cls, allowed: list[Any] | None, forbidden: list[Any] | None) -> NameRules:
        allowed, forbidden = allowed or [], forbidden or []
        return cls(
            allow_all=bool(allowed) and allowed[0] is None,
            allowed=tuple(parse_name_pattern(p) for p in allowed if p is not None),
            forbidden=()
            if forbidden and forbidden[0] is None
            else tuple(parse_name_pattern(p) for p in forbidden if p is not None),
        )

    def permits(self, name: str) -> bool:
        return (self.allow_all or _name_matches(name, self.allowed)) and not _name_matches(
            name, self.forbidden
        )


def _name_matches(name: str, patterns: tuple[str | re.Pattern[str], ...]) -> bool:
    return any(name == p if isinstance(p, str) else p.search(name) for p in patterns)


def _rules(group: Mapping[str, Any], kind: str) -> NameRules:
    return NameRules.from_lists(group.get(f"allowed_{kind}"), group.get(f"forbidden_{kind}"))


def function_allowed(name: str, group: str, permissions: Mapping[str, Any]) -> bool:
    """Whether users of `group` may execute the function `name` (root's lists apply too)."""
    groups = permissions.get("user_groups") or {}
    if group not in groups or "root" not in groups:
        return False
    try:
        return all(_rules(groups[g], "functions").permits(name) for g in ("root", group))
    except ValueError as exc:
        raise BadRequest(f"user_groups.{group}: {exc}") from None


# ----- devices -----


def _walk(tree: Mapping[str, Any], prefix: Path = ()) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    for name, node in tree.items():
        yield (*prefix, name), node
        yield from _walk(node.get("components") or {}, (*prefix, name))


def _select_full(
    level: Level,
    cond: Callable[[Flags], bool],
    tree: Mapping[str, Any],
    prefix: Path,
    suffix: Path,
    out: set[Path],
) -> None:
    if level.depth is not None and len(suffix) >= level.depth:
        return
    for name, node in tree.items():
        rest = (*suffix, name)
        if level.regex.search(".".join(rest)) and cond(node):
            out.add(prefix + rest)
        _select_full(level, cond, node.get("components") or {}, prefix, rest, out)


def _select_levels(
    pattern: DevicePattern, tree: Mapping[str, Any], prefix: Path, n: int, out: set[Path]
) -> None:
    level, cond = pattern.levels[n], DEVICE_TYPES[pattern.device_type]
    if level.full_name:
        _select_full(level, cond, tree, prefix, (), out)
        return
    for name, node in tree.items():
        if not level.regex.search(name):
            continue
        if level.select and cond(node):
            out.add((*prefix, name))
        if n + 1 < len(pattern.levels):
            _select_levels(pattern, node.get("components") or {}, (*prefix, name), n + 1, out)


def _node_at(path: Path, tree: Mapping[str, Any]) -> Mapping[str, Any] | None:
    node: Any = {"components": tree}
    for part in path:
        node = (node.get("components") or {}).get(part)
        if not isinstance(node, Mapping):
            return None
    return node


def select_devices(pattern: DevicePattern, tree: Mapping[str, Any]) -> set[Path]:
    """The paths of the nodes of `tree` that `pattern` selects."""
    if pattern.literal:
        return {pattern.literal} if _node_at(pattern.literal, tree) is not None else set()
    out: set[Path] = set()
    _select_levels(pattern, tree, (), 0, out)
    return out


def _paths(tree: Mapping[str, Any], entries: list[Any] | None, everything: bool) -> set[Path]:
    entries = entries or []
    if entries and entries[0] is None:
        return {path for path, _ in _walk(tree)} if everything else set()
    return set().union(
        *(select_devices(parse_device_pattern(e), tree) for e in entries if e is not None)
    )


def _prune(tree: Mapping[str, Any], keep: set[Path], prefix: Path = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, node in tree.items():
        path = (*prefix, name)
        below = _prune(node.get("components") or {}, keep, path)
        allowed = path in keep and not node.get("excluded")
        if not allowed and not below:
            continue
        copied = {
            k: copy.deepcopy(v) for k, v in node.items() if k not in ("components", "excluded")
        }
        if below:
            copied["components"] = below
        if not allowed:
            copied["excluded"] = True
        out[name] = copied
    return out


def filter_devices(tree: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a device tree that a group's device lists allow."""
    keep = _paths(tree, group.get("allowed_devices"), everything=True)
    keep -= _paths(tree, group.get("forbidden_devices"), everything=False)
    return _prune(tree, keep)


def find_device(name: str, devices: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The description of an allowed device or component (`det1`, `det1.val`), else None."""
    node = _node_at(tuple(name.split(".")), devices)
    return None if node is None or node.get("excluded") else node


def device_names(devices: Mapping[str, Any]) -> set[str]:
    """Full dotted names of every allowed device and component in a device tree."""
    return {".".join(path) for path, node in _walk(devices) if not node.get("excluded")}


# ----- allowed lists per group -----


def _filter_plans(plans: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    rules = _rules(group, "plans")
    return {name: copy.deepcopy(desc) for name, desc in plans.items() if rules.permits(name)}


def allowed_lists(
    plans_existing: Mapping[str, Any],
    devices_existing: Mapping[str, Any],
    permissions: Mapping[str, Any],
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """For each user group: (plans_allowed, devices_allowed), the root filter applied first."""
    groups = load_permissions(permissions)["user_groups"]
    root_plans = _filter_plans(plans_existing, groups["root"])
    root_devices = filter_devices(devices_existing, groups["root"])
    out = {"root": (root_plans, root_devices)}
    for name, group in groups.items():
        if name != "root":
            out[name] = (_filter_plans(root_plans, group), filter_devices(root_devices, group))
    return out
