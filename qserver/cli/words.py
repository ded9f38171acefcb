"""Parsing command words and the v0.0.1 argv into request parameters (pure; unit tested)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from qserver.cli.errors import BadParams
from qserver.legacy import parse_pos, pos_or_uid


def load_json(text: str, what: str = "JSON") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadParams(f"Invalid {what} {text!r}: {e.msg} at position {e.pos}") from None


def make_item(kind: str, text: str) -> dict[str, Any]:
    """An item of type `kind` from JSON; `queue-stop` is short for the only instruction."""
    if kind == "instruction" and text in ("queue-stop", "queue_stop"):
        return {"item_type": "instruction", "name": "queue_stop"}
    obj = load_json(text, f"{kind} JSON")
    if not isinstance(obj, dict):
        raise BadParams(f"The {kind} must be a JSON object, got {text!r}")
    return {**obj, "item_type": kind}


def batch_items(text: str) -> list[dict[str, Any]]:
    objs = load_json(text, "batch JSON")
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise BadParams(f"A batch must be a JSON list of objects, got {text!r}")
    return [{"item_type": "plan", **o} for o in objs]


def _relative(words: Sequence[str]) -> dict[str, Any] | None:
    """`before <uid>` or `after <uid>`, else None."""
    if len(words) == 2 and words[0] in ("before", "after"):
        return {f"{words[0]}_uid": words[1]}
    return None


def parse_dest(words: Sequence[str], pos_key: str = "pos") -> dict[str, Any]:
    """Where to put items: `front|back|<pos>|before <uid>|after <uid>`; default back."""
    if not words:
        return {pos_key: "back"}
    if (rel := _relative(words)) is not None:
        return rel
    if len(words) == 1:
        return {pos_key: parse_pos(words[0])}
    raise BadParams(
        f"Invalid destination {' '.join(words)!r}: "
        "use front, back, <pos>, before <uid> or after <uid>"
    )


def parse_move(words: Sequence[str]) -> dict[str, Any]:
    """`<src: pos|uid|front|back> <dest: pos|front|back> | before <uid> | after <uid>`."""
    if len(words) not in (2, 3):
        raise BadParams("Move takes <src> then <pos>, before <uid> or after <uid>")
    return {**pos_or_uid(words[0]), **parse_dest(words[1:], "pos_dest")}


def parse_batch_move(words: Sequence[str]) -> dict[str, Any]:
    """`<uid>... front|back|before <uid>|after <uid>`."""
    if len(words) >= 3 and (rel := _relative(words[-2:])) is not None:
        uids, dest = words[:-2], rel
    elif len(words) >= 2 and words[-1] in ("front", "back"):
        uids, dest = words[:-1], {"pos_dest": words[-1]}
    else:
        raise BadParams("Batch move takes <uid>... then front, back, before <uid> or after <uid>")
    return {"uids": list(uids), **dest}


def parse_bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "1", "on", "yes"):
        return True
    if value in ("false", "0", "off", "no"):
        return False
    raise BadParams(f"Invalid boolean {text!r}: use True or False")


def parse_mode(words: Sequence[str]) -> dict[str, Any]:
    """`default`, or pairs such as `loop True ignore_failures False`."""
    if list(words) == ["default"]:
        return {"mode": "default"}
    if not words or len(words) % 2:
        raise BadParams("Mode takes 'default' or pairs: loop|ignore_failures True|False")
    mode = {}
    for name, value in zip(words[::2], words[1::2], strict=True):
        key = name.replace("-", "_")
        if key not in ("loop", "ignore_failures"):
            raise BadParams(f"Unknown queue mode {name!r}: use loop or ignore_failures")
        mode[key] = parse_bool(value)
    return {"mode": mode}


def parse_manager_stop(words: Sequence[str]) -> dict[str, Any]:
    """`[safe on|safe off]`, also written `safe_on`/`safe_off`."""
    option = "_".join(words).replace("-", "_")
    if not option:
        return {}
    if option not in ("safe_on", "safe_off"):
        raise BadParams(f"Invalid option {' '.join(words)!r}: use 'safe on' or 'safe off'")
    return {"option": option}


def parse_history_clear(words: Sequence[str]) -> dict[str, Any]:
    if not words:
        return {}
    if len(words) > 1:
        raise BadParams("History clear takes at most one size or item uid")
    try:
        return {"size": int(words[0])}
    except ValueError:
        return {"item_uid": words[0]}


def flags(words: Sequence[str], allowed: Sequence[str]) -> set[str]:
    unknown = set(words) - set(allowed)
    if unknown:
        raise BadParams(f"Unknown keyword(s) {sorted(unknown)}: use {', '.join(allowed)}")
    return set(words)


# ----- the v0.0.1 form: `qserver -c <command> [-p <param>]...` -----

# fmt: off
_VALUE_OPTIONS = frozenset({
    "-a", "--address", "--prefix", "-k", "--lock-key", "--timeout", "--format",
    "-c", "--command", "-p", "--param",
})
# fmt: on
_NUMBER = re.compile(r"^-\d+(\.\d*)?$")


def normalize_legacy_argv(args: Sequence[str]) -> list[str]:
    """In the `-c` form, turn every bare value into `-p value`.

    v0.0.1 let one `-p` take several values (`-p front '{...}'`); click options take one.
    Negative numbers are values, not options. Without `-c` before the first command word,
    the arguments are returned unchanged.
    """
    out: list[str] = []
    legacy = False
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in _VALUE_OPTIONS:
            legacy = legacy or tok in ("-c", "--command")
            out += args[i : i + 2]
            i += 2
            continue
        legacy = legacy or tok.startswith("--command=")
        if tok.startswith("-") and not _NUMBER.match(tok):
            out.append(tok)
        elif not legacy:
            return list(args)  # a command word: the keyword form
        else:
            out += ["-p", tok]
        i += 1
    return out
