"""Describe the plans and devices of a startup namespace in the reference server's format.

Plans: `{name, module, description, properties{is_generator}, parameters[...]}`; devices:
`{classname, module, is_readable, is_movable, is_flyable, components{...}}`. Keys come in
alphabetical order, as the reference emits them. Annotations are written as strings with
the bluesky protocols replaced by the `__READABLE__`-style placeholders; an annotation that
cannot be read back (type variables, classes from unknown modules) is left out, as the
reference ignores unsupported hints.
"""

from __future__ import annotations

import collections
import collections.abc
import enum
import functools
import inspect
import logging
import operator
import re
import textwrap
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import bluesky
import bluesky.protocols as bp

logger = logging.getLogger(__name__)

DEFAULT_MAX_DEPTH = 5
# Guards recursion when max_depth <= 0 means "no limit" (devices can be cyclic).
_HARD_DEPTH_LIMIT = 50

_PLACEHOLDERS = {
    "NamedMovable": "__MOVABLE__",
    "Readable": "__READABLE__",
    "Movable": "__MOVABLE__",
    "Flyable": "__FLYABLE__",
}
_QUALIFIED_RE = re.compile(r"\bbluesky\.protocols\.(NamedMovable|Readable|Movable|Flyable)\b")
# Annotations left as strings (`from __future__ import annotations` in startup code).
_BARE_RE = re.compile(
    r"(?<![\w.])(?:bluesky\.protocols\.)?(NamedMovable|Readable|Movable|Flyable)\b"
)

# What an annotation string may refer to when it is read back (the reference's namespace).
_SAFE_BUILTINS = {
    t.__name__: t
    for t in (
        int,
        float,
        str,
        bool,
        bytes,
        complex,
        list,
        dict,
        tuple,
        set,
        frozenset,
        type,
        object,
        slice,
    )
}
_EVAL_NS: dict[str, Any] = {
    "__builtins__": _SAFE_BUILTINS,
    "typing": typing,
    "collections": collections,
    "bluesky": bluesky,
    "enum": enum,
    "NoneType": type(None),
    **{p: str for p in set(_PLACEHOLDERS.values())},
}

_SECTION_RE = re.compile(r"^\s*-{3,}\s*$")


# ----- plans -----


def is_plan(obj: Any) -> bool:
    """Generator functions, and functions decorated so that they return plans."""
    if isinstance(obj, type) or not callable(obj):
        return False
    if getattr(obj, "_is_plan_", False):  # bluesky.utils.plan (mv, mvr, sleep, ...)
        return True
    try:
        return inspect.isgeneratorfunction(inspect.unwrap(obj))
    except ValueError:  # a cycle of __wrapped__
        return False


def _format_annotation(annotation: Any) -> str:
    if isinstance(annotation, str):
        return _BARE_RE.sub(lambda m: _PLACEHOLDERS[m.group(1)], annotation)
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        name = annotation.__qualname__
        text = name if annotation.__module__ == "builtins" else f"{annotation.__module__}.{name}"
    else:
        text = repr(annotation)
    return _QUALIFIED_RE.sub(lambda m: _PLACEHOLDERS[m.group(1)], text)


def _readable_back(text: str) -> bool:
    # The strings come from the startup code's own objects, not from requests.
    try:
        eval(text, dict(_EVAL_NS))
    except Exception:
        return False
    return True


def _signature(obj: Any) -> inspect.Signature:
    try:
        return inspect.signature(obj, eval_str=True)
    except Exception:  # an annotation string that does not evaluate: keep it as text
        return inspect.signature(obj)


def split_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: description}) from a numpydoc docstring."""
    lines = inspect.cleandoc(doc or "").splitlines()
    sections: dict[str, list[str]] = {}
    summary: list[str] = []
    current = summary
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _SECTION_RE.match(lines[i + 1]):
            current = sections.setdefault(lines[i].strip().lower(), [])
            i += 2
            continue
        current.append(lines[i])
        i += 1
    params: dict[str, str] = {}
    for section in ("parameters", "other parameters"):
        params.update(_parse_params(sections.get(section, [])))
    return "\n".join(summary).strip(), params


def _parse_params(lines: list[str]) -> Iterator[tuple[str, str]]:
    names: list[str] = []
    body: list[str] = []

    def flush() -> Iterator[tuple[str, str]]:
        text = textwrap.dedent("\n".join(body)).strip()
        for n in names:
            yield n, text

    for line in lines:
        if line.strip() and not line[0].isspace():
            yield from flush()
            head = line.split(":", 1)[0]
            names = [n.strip().lstrip("*") for n in head.split(",") if n.strip()]
            body = []
        else:
            body.append(line)
    yield from flush()


_PROTOCOLS = (bp.Readable, bp.Movable, bp.Flyable, bp.NamedMovable)


def _members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _names_a_device(annotation: Any) -> bool:
    return any(m in _PROTOCOLS for m in _members(annotation))


def _values_as_numbers(annotation: Any) -> Any:
    """`Any` -> `float`, also inside lists, sequences and unions."""
    if annotation is typing.Any:
        return float
    members = _members(annotation)
    if len(members) > 1:
        return functools.reduce(operator.or_, map(_values_as_numbers, members))
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable) and len(args) == 1:
        return origin[_values_as_numbers(args[0])]
    return annotation


def grouped_annotation(annotation: Any) -> Any:
    """What a `*args: tuple[Movable | Any, list[Any]]` takes, for the flat form it is called in.

    bluesky annotates `list_scan`'s `*args` with one (motor, positions) group; over the queue
    the values come flat, in groups of the tuple's length (ADR 15). In such a group the
    device slot takes a device (a name, never any value) and the others the values the device
    is set to: `Any` there becomes a number. Other annotations are returned unchanged.
    """
    if typing.get_origin(annotation) is not tuple:
        return annotation
    slots = typing.get_args(annotation)
    if not slots or Ellipsis in slots or not any(map(_names_a_device, slots)):
        return annotation
    tightened = [
        functools.reduce(operator.or_, [m for m in _members(s) if m is not typing.Any])
        if _names_a_device(s)
        else _values_as_numbers(s)
        for s in slots
    ]
    return tuple.__class_getitem__(tuple(tightened))  # tuple[...] of runtime values


def describe_parameter(p: inspect.Parameter, doc: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if p.annotation is not inspect.Parameter.empty:
        annotation = p.annotation
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            annotation = grouped_annotation(annotation)
        text = _format_annotation(annotation)
        if _readable_back(text):
            out["annotation"] = {"type": text}
            if any(v in text for v in _PLACEHOLDERS.values()):
                out["convert_device_names"] = True
    if p.default is not inspect.Parameter.empty:
        out["default"] = repr(p.default)
    if doc:
        out["description"] = doc
    out["kind"] = {"name": p.kind.name, "value": int(p.kind)}
    out["name"] = p.name
    return out


def describe_plan(name: str, obj: Any) -> dict[str, Any]:
    summary, param_docs = split_docstring(inspect.getdoc(obj))
    params = [
        describe_parameter(p, param_docs.get(p.name)) for p in _signature(obj).parameters.values()
    ]
    out: dict[str, Any] = {}
    if summary:
        out["description"] = summary
    out["module"] = getattr(obj, "__module__", None) or ""
    out["name"] = name
    out["parameters"] = params
    out["properties"] = {"is_generator": True}
    return out


def describe_plans(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Every plan in the namespace, by name.

    Names starting with `_` are listed too, as the reference lists them: permissions keep
    them out of the allowed lists (the `root` group's `:^_` rule).
    """
    plans: dict[str, Any] = {}
    for name in sorted(namespace):
        obj = namespace[name]
        if name.startswith("__") or not is_plan(obj):
            continue
        try:
            plans[name] = describe_plan(name, obj)
        except Exception as e:  # one odd plan must not hide the others
            logger.warning("plan %r is left out of the existing plans: %r", name, e)
    return plans


# ----- devices -----


def is_device(obj: Any) -> bool:
    """Anything implementing bluesky's Readable, Movable or Flyable (ophyd objects do)."""
    if isinstance(obj, type) or inspect.ismodule(obj) or inspect.isroutine(obj):
        return False
    try:
        return isinstance(obj, bp.Readable | bp.Movable | bp.Flyable)
    except Exception:  # a property that raises while the protocol check probes it
        return False


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    names = getattr(obj, "component_names", None)  # ophyd
    if isinstance(names, tuple | list):
        for n in names:
            yield n, getattr(obj, n)
        return
    children = getattr(obj, "children", None)  # ophyd-async
    if callable(children):
        yield from children()


def describe_device(obj: Any, max_depth: int = DEFAULT_MAX_DEPTH, depth: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"classname": type(obj).__name__}
    limit = max_depth if max_depth > 0 else _HARD_DEPTH_LIMIT
    if depth < limit:
        components: dict[str, Any] = {}
        try:
            for name, child in sorted(_children(obj), key=lambda c: c[0]):
                if not name.startswith("_") and is_device(child):
                    components[name] = describe_device(child, max_depth, depth + 1)
        except Exception as e:
            logger.warning("components of %r are left out: %r", getattr(obj, "name", obj), e)
        if components:
            out["components"] = components
    out["is_flyable"] = isinstance(obj, bp.Flyable)
    out["is_movable"] = isinstance(obj, bp.Movable)
    out["is_readable"] = isinstance(obj, bp.Readable)
    out["module"] = type(obj).__module__
    return out


def describe_devices(
    namespace: Mapping[str, Any], max_depth: int = DEFAULT_MAX_DEPTH
) -> dict[str, Any]:
    """Every device in the namespace with its components down to `max_depth` levels
    (`_` names too, as for plans)."""
    devices: dict[str, Any] = {}
    for name in sorted(namespace):
        obj = namespace[name]
        if name.startswith("__") or not is_device(obj):
            continue
        try:
            devices[name] = describe_device(obj, max_depth)
        except Exception as e:
            logger.warning("device %r is left out of the existing devices: %r", name, e)
    return devices
