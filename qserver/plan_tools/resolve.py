"""Turn plan and device names in plan arguments into objects, from an allowed list only.

Nothing from a request is evaluated: a string is replaced only when it is exactly the name
of an allowed plan or device (dotted names such as `det1.val` are looked up attribute by
attribute from the allowed top-level object). Other strings pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

MAX_DEPTH = 64


def lookup(name: str, namespace: Mapping[str, Any], allowed: Collection[str]) -> tuple[bool, Any]:
    """(True, object) if `name` names an allowed object in the namespace, else (False, None)."""
    if name in allowed and name in namespace:
        return True, namespace[name]
    head, _, rest = name.partition(".")
    if not rest or (name not in allowed and head not in allowed) or head not in namespace:
        return False, None
    obj = namespace[head]
    for part in rest.split("."):
        if not part.isidentifier() or part.startswith("_"):
            return False, None
        try:
            obj = getattr(obj, part)
        except AttributeError:
            return False, None
    return True, obj


def resolve_value(
    value: Any, namespace: Mapping[str, Any], allowed: Collection[str], depth: int = 0
) -> Any:
    """Replace allowed names anywhere inside lists, tuples and dict values."""
    if depth > MAX_DEPTH:
        raise ValueError("plan arguments are nested too deeply")
    if isinstance(value, str):
        found, obj = lookup(value, namespace, allowed)
        return obj if found else value
    if isinstance(value, list):
        return [resolve_value(v, namespace, allowed, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve_value(v, namespace, allowed, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: resolve_value(v, namespace, allowed, depth + 1) for k, v in value.items()}
    return value


def resolve_args(
    args: list[Any], kwargs: dict[str, Any], namespace: Mapping[str, Any], allowed: Collection[str]
) -> tuple[list[Any], dict[str, Any]]:
    """The plan's positional and keyword arguments with allowed names resolved."""
    return (
        [resolve_value(a, namespace, allowed) for a in args],
        {k: resolve_value(v, namespace, allowed) for k, v in kwargs.items()},
    )
