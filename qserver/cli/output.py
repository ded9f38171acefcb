"""Printing replies as JSON or as a table, and the monitor's status lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from qserver.cli.errors import RequestRefused

WATCHED = ("manager_state", "items_in_queue", "items_in_history", "running_item_uid", "lock")


def show(reply: dict[str, Any], fmt: str) -> None:
    """Print a reply; a refusal raises `RequestRefused`."""
    check(reply)
    click.echo(format_table(reply) if fmt == "table" else json.dumps(reply, indent=2))


def check(reply: dict[str, Any]) -> None:
    """Raise `RequestRefused` for a refused request, with the per-item messages."""
    # `status` replies carry no `success` key: only an explicit false is a refusal.
    if reply.get("success", True) is False:
        lines = [f"Request failed: {reply.get('msg', '')}"]
        lines += [
            f"  item {i}: {r.get('msg')}"
            for i, r in enumerate(reply.get("results", []))
            if isinstance(r, dict) and not r.get("success", True)
        ]
        raise RequestRefused("\n".join(lines))


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def item_rows(items: Sequence[dict[str, Any]]) -> list[list[str]]:
    with_status = any("result" in it for it in items)
    header = ["pos", "uid", "name", "args", "kwargs", "user"] + (["status"] if with_status else [])
    rows = [header]
    for pos, it in enumerate(items):
        row = [
            str(pos),
            str(it.get("item_uid", "")),
            str(it.get("name", "")),
            _compact(it.get("args", [])),
            _compact(it.get("kwargs", {})),
            str(it.get("user", "")),
        ]
        if with_status:
            row.append(str((it.get("result") or {}).get("exit_status", "")))
        rows.append(row)
    return rows


def format_table(reply: dict[str, Any]) -> str:
    """Items as an aligned table; every other key as a `key: value` line."""
    lines = []
    items = reply.get("items")
    if items is None and isinstance(reply.get("item"), dict):
        items = [reply["item"]]
    if isinstance(items, list) and all(isinstance(it, dict) for it in items):
        rows = item_rows(items)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
    lines += [f"{k}: {_compact(v)}" for k, v in reply.items() if k not in ("items", "item")]
    return "\n".join(lines)


_KINDS = {"VAR_POSITIONAL": "*", "VAR_KEYWORD": "**"}


def plan_signature(description: dict[str, Any]) -> str:
    """`count(detectors, num=1, delay=None, *, md=None)` from a plan's description."""
    parts: list[str] = []
    for p in description.get("parameters", []):
        kind = (p.get("kind") or {}).get("name", "")
        if kind == "KEYWORD_ONLY" and not any(x.startswith("*") for x in parts):
            parts.append("*")
        text = _KINDS.get(kind, "") + str(p.get("name", ""))
        parts.append(f"{text}={p['default']}" if "default" in p else text)
    return f"{description.get('name', '')}({', '.join(parts)})"


def device_line(name: str, description: dict[str, Any]) -> str:
    """`motor  SynAxis  movable readable` from a device's description."""
    abilities = [a for a in ("movable", "readable", "flyable") if description.get(f"is_{a}")]
    return f"{name}  {description.get('classname', '')}  {' '.join(abilities)}".rstrip()


def format_lists(reply: dict[str, Any], key: str, names_only: bool) -> str:
    """The plans or devices under `key`, one a line: names only, or with a summary."""
    entries: dict[str, Any] = reply.get(key) or {}
    if names_only:
        return "\n".join(sorted(entries))
    if key.startswith("plans"):
        return "\n".join(plan_signature({"name": n, **entries[n]}) for n in sorted(entries))
    return "\n".join(device_line(n, entries[n]) for n in sorted(entries))


def monitor_fields(status: dict[str, Any]) -> str:
    """What `qserver monitor` shows of a status, without its time."""
    return " ".join(f"{k}={_compact(status.get(k))}" for k in WATCHED)


def monitor_line(status: dict[str, Any]) -> str:
    return f"{status.get('time', '')}  {monitor_fields(status)}"


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    minutes, seconds = divmod(float(value), 60.0)
    return f"{int(minutes)}:{seconds:04.1f}" if minutes else f"{seconds:.1f} s"


def _position(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_bar(ev: dict[str, Any], width: int = 30) -> str:
    """One line of `qserver monitor progress`: bar, point n/N, elapsed, ETA, positions."""
    point, num = ev.get("point") or 0, ev.get("num_points")
    if isinstance(num, int) and num > 0:
        filled = min(width, width * point // num)
        bar = "[" + "#" * filled + "." * (width - filled) + "]"
        count = f"{point}/{num} {100 * point // num:3d}%"
    else:
        bar, count = "[" + "?" * width + "]", f"{point}/?"
    scan = f"scan {ev['scan_id']} " if ev.get("scan_id") is not None else ""
    parts = [
        f"{scan}{ev.get('plan_name') or 'run'}",
        bar,
        count,
        f"elapsed {_seconds(ev.get('elapsed'))}",
    ]
    if ev.get("done"):
        parts.append(f"done: {ev.get('exit_status') or 'unknown'}")
    elif ev.get("eta") is not None:
        parts.append(f"ETA {_seconds(ev.get('eta'))}")
    positions = ev.get("positions") or {}
    parts += [f"{m}={_position(v)}" for m, v in positions.items()]
    return "  ".join(parts)
