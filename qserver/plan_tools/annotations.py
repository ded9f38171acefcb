"""Parse a parameter's annotation string without evaluating it, and check JSON values against it.

The string is read with `ast.parse` and only a known vocabulary is understood: builtin
scalars, `Any`, unions, `Optional`, `Literal`, list/sequence/iterable/set, tuple and
dict/mapping generics (with or without `typing.`/`collections.abc.` prefixes), the
pseudo-types `__DEVICE__`, `__READABLE__`, `__MOVABLE__`, `__FLYABLE__`, `__PLAN__`,
`__PLAN_OR_DEVICE__`, `__CALLABLE__` (names passed as strings), and the custom enums of
the annotation's `devices`/`plans`/`enums` sections. Anything else makes the whole
annotation unknown, and an unknown annotation accepts any value.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

PREFIXES = (
    "typing.",
    "typing_extensions.",
    "collections.abc.",
    "collections.",
    "builtins.",
    "bluesky.protocols.",
)
PROTOCOLS = {"Readable": "__READABLE__", "Movable": "__MOVABLE__", "NamedMovable": "__MOVABLE__"}
PROTOCOLS |= {"Flyable": "__FLYABLE__", "Callable": "__CALLABLE__"}
ROLES = {
    "__DEVICE__": "device",
    "__READABLE__": "readable",
    "__MOVABLE__": "movable",
    "__FLYABLE__": "flyable",
    "__PLAN__": "plan",
    "__PLAN_OR_DEVICE__": "plan or device",
    "__CALLABLE__": "callable",
}
SEQUENCES = {"list", "List", "Sequence", "MutableSequence", "Iterable", "Collection"}
SEQUENCES |= {"set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet"}
TUPLES = {"tuple", "Tuple"}
MAPPINGS = {"dict", "Dict", "Mapping", "MutableMapping"}
# Abstract collections refuse a str the way pydantic does: a str is a sequence of chars.
NO_STR = {"Sequence", "MutableSequence", "Iterable", "Collection"}
SCALARS: dict[str, Callable[[object], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "None": lambda v: v is None,
}
MAX_NESTING = 32


@dataclass(frozen=True)
class AnyType:
    """Accepts any value: `Any`, or an annotation this parser does not understand."""

    label: str = "Any"


@dataclass(frozen=True)
class Scalar:
    label: str


@dataclass(frozen=True)
class OneOf:
    options: tuple[Spec, ...]

    @property
    def label(self) -> str:
        return " | ".join(o.label for o in self.options)


@dataclass(frozen=True)
class Items:
    """A JSON array whose items all match `item` (list, sequence, set, `tuple[X, ...]`)."""

    origin: str
    item: Spec
    variadic_tuple: bool = False

    @property
    def label(self) -> str:
        return f"{self.origin}[{self.item.label}{', ...' if self.variadic_tuple else ''}]"


@dataclass(frozen=True)
class Fixed:
    """A fixed-length tuple."""

    items: tuple[Spec, ...]
    origin: str = "tuple"

    @property
    def label(self) -> str:
        return f"{self.origin}[{', '.join(i.label for i in self.items)}]"


@dataclass(frozen=True)
class MappingOf:
    origin: str
    key: Spec
    value: Spec

    @property
    def label(self) -> str:
        return f"{self.origin}[{self.key.label}, {self.value.label}]"


@dataclass(frozen=True)
class Choice:
    """`Literal[...]` or a custom enum: the value must be one of `values`."""

    label: str
    values: tuple[object, ...]


@dataclass(frozen=True)
class Named:
    """A plan or device name passed as a string; `names` narrows it to a custom list."""

    label: str
    role: str
    names: frozenset[str] | None = None


Spec = AnyType | Scalar | OneOf | Items | Fixed | MappingOf | Choice | Named


class Unsupported(Exception):
    """The annotation uses something outside the known vocabulary."""


# ----- parsing -----


def parse_annotation(annotation: Mapping[str, Any] | None) -> Spec | None:
    """The spec of a parameter's `annotation` description, or None if there is none."""
    if not annotation or not isinstance(annotation.get("type"), str):
        return None
    text = annotation["type"]
    custom: dict[str, Spec] = {}
    for section, role in (("devices", "device"), ("plans", "plan")):
        for name, names in (annotation.get(section) or {}).items():
            custom[name] = Named(name, role, frozenset(names))
    for name, values in (annotation.get("enums") or {}).items():
        custom[name] = Choice(name, tuple(values))
    try:
        return _build(ast.parse(text.strip(), mode="eval").body, custom, 0)
    except (SyntaxError, ValueError, RecursionError, Unsupported):
        return AnyType(text)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise Unsupported(ast.dump(node))


def _short(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def _build(node: ast.expr, custom: Mapping[str, Spec], depth: int) -> Spec:
    if depth > MAX_NESTING:
        raise Unsupported("nested too deeply")
    if isinstance(node, ast.Constant) and node.value is None:
        return Scalar("None")
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_build(n, custom, depth + 1) for n in (node.left, node.right)])
    if isinstance(node, ast.Subscript):
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return _generic(_short(_dotted(node.value)), args, custom, depth + 1)
    name = _dotted(node)
    if name in custom:
        return custom[name]
    return _plain(_short(name))


def _plain(name: str) -> Spec:
    name = PROTOCOLS.get(name, name)
    if name == "NoneType":
        return Scalar("None")
    if name in SCALARS:
        return Scalar(name)
    if name == "Any":
        return AnyType()
    if name in ROLES:
        return Named(name, ROLES[name])
    if name in SEQUENCES:
        return Items(name, AnyType())
    if name in TUPLES:
        return Items(name, AnyType(), variadic_tuple=True)
    if name in MAPPINGS:
        return MappingOf(name, AnyType(), AnyType())
    raise Unsupported(name)


def _generic(origin: str, args: list[ast.expr], custom: Mapping[str, Spec], depth: int) -> Spec:
    if origin == "Callable":
        return Named("__CALLABLE__", "callable")
    if origin == "Literal":
        if not all(isinstance(a, ast.Constant) for a in args):
            raise Unsupported("Literal of non-constants")
        values = tuple(a.value for a in args if isinstance(a, ast.Constant))
        return Choice(f"Literal[{', '.join(map(repr, values))}]", values)
    if origin in TUPLES and len(args) == 2 and _is_ellipsis(args[1]):
        return Items(origin, _build(args[0], custom, depth), variadic_tuple=True)
    specs = [_build(a, custom, depth) for a in args]
    if origin == "Union":
        return _union(specs)
    if origin == "Optional" and len(specs) == 1:
        return _union([specs[0], Scalar("None")])
    if origin in SEQUENCES and len(specs) == 1:
        return Items(origin, specs[0])
    if origin in TUPLES:
        return Fixed(tuple(specs), origin)
    if origin in MAPPINGS and len(specs) == 2:
        return MappingOf(origin, specs[0], specs[1])
    raise Unsupported(origin)


def _is_ellipsis(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is Ellipsis


def _union(specs: list[Spec]) -> Spec:
    flat: list[Spec] = []
    for spec in specs:
        for option in spec.options if isinstance(spec, OneOf) else (spec,):
            if option not in flat:
                flat.append(option)
    return flat[0] if len(flat) == 1 else OneOf(tuple(flat))


def describe(spec: Spec) -> str:
    """How a message names the expected type: a top-level union reads `int or None`."""
    if isinstance(spec, OneOf):
        return " or ".join(o.label for o in spec.options)
    return spec.label


# ----- checking -----


class NameLookup(Protocol):
    """What the checker needs to know about a group's allowed plans and devices."""

    def device(self, name: str) -> Mapping[str, Any] | None: ...

    def is_plan(self, name: str) -> bool: ...


@dataclass(frozen=True)
class Mismatch:
    """Why a value does not fit; without `detail` the whole value has the wrong type."""

    detail: str | None = None
    names_a_value: bool = False  # the detail names a refused plan/device name


def shown(value: object) -> str:
    """A value in a message: its JSON type and a shortened repr."""
    if value is None:
        return "None"
    try:
        text = repr(value)
    except RecursionError:
        text = "(nested too deeply to show)"
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check(value: object, spec: Spec, names: NameLookup) -> Mismatch | None:
    """None if `value` fits `spec`, else why not."""
    match spec:
        case AnyType():
            return None
        case Scalar(label=label):
            return None if SCALARS[label](value) else Mismatch()
        case OneOf(options=options):
            return _check_union(value, options, names)
        case Items():
            return _check_items(value, spec, names)
        case Fixed(items=items):
            if not isinstance(value, list | tuple) or len(value) != len(items):
                return Mismatch()
            return _first_item_problem(value, items, names)
        case MappingOf():
            return _check_mapping(value, spec, names)
        case Choice(values=values):
            ok = any(value == v and type(value) is type(v) for v in values)
            allowed = ", ".join(map(repr, values))
            return None if ok else Mismatch(f"{value!r} is not one of {allowed}", True)
        case Named():
            return _check_name(value, spec, names)
    raise AssertionError(spec)  # pragma: no cover


def _check_union(value: object, options: tuple[Spec, ...], names: NameLookup) -> Mismatch | None:
    problems = []
    for option in options:
        problem = check(value, option, names)
        if problem is None:
            return None
        problems.append(problem)
    # A refused name explains more than "wrong type"; other details would mislead.
    return next((p for p in problems if p.names_a_value), Mismatch())


def _check_items(value: object, spec: Items, names: NameLookup) -> Mismatch | None:
    if isinstance(value, str) and spec.origin in NO_STR:
        return Mismatch("'str' instances are not allowed as a Sequence value")
    if not isinstance(value, list | tuple):
        return Mismatch()
    return _first_item_problem(value, [spec.item] * len(value), names)


def _first_item_problem(
    values: list[Any] | tuple[Any, ...], specs: list[Spec] | tuple[Spec, ...], names: NameLookup
) -> Mismatch | None:
    for n, (item, spec) in enumerate(zip(values, specs, strict=True)):
        problem = check(item, spec, names)
        if problem is not None:
            return _inside(f"item {n}", item, spec, problem)
    return None


def _check_mapping(value: object, spec: MappingOf, names: NameLookup) -> Mismatch | None:
    if not isinstance(value, dict):
        return Mismatch()
    for key, item in value.items():
        problem = check(key, spec.key, names)
        if problem is not None:
            return _inside("key", key, spec.key, problem)
        problem = check(item, spec.value, names)
        if problem is not None:
            return _inside(f"value of {key!r}", item, spec.value, problem)
    return None


def _inside(where: str, item: object, spec: Spec, problem: Mismatch) -> Mismatch:
    if problem.names_a_value:
        return problem
    if problem.detail:
        return Mismatch(f"{where}: {problem.detail}")
    return Mismatch(f"{where} must be {describe(spec)}, got {shown(item)}")


def _check_name(value: object, spec: Named, names: NameLookup) -> Mismatch | None:
    if not isinstance(value, str):
        return Mismatch()
    if spec.names is not None and value not in spec.names:
        return Mismatch(f"{value!r} is not one of the names allowed for {spec.label}", True)
    problem = name_problem(value, spec.role, names)
    return None if problem is None else Mismatch(problem, True)


def name_problem(value: str, role: str, names: NameLookup) -> str | None:
    """None if `value` names an allowed plan/device of this role, else what is wrong."""
    if role == "callable":
        ok = all(part.isidentifier() for part in value.split("."))
        return None if ok else f"{value!r} is not a valid name of a callable"
    if role in ("plan", "plan or device") and names.is_plan(value):
        return None
    if role == "plan":
        return f"{value!r} is not an allowed plan"
    device = names.device(value)
    if device is None:
        return f"{value!r} is not an allowed {'plan or device' if 'plan' in role else 'device'}"
    flag = {"readable": "is_readable", "movable": "is_movable", "flyable": "is_flyable"}.get(role)
    if flag and not device.get(flag):
        return f"{value!r} is not a {role} device"
    return None
