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
    # `status` replies carry no `success` key: only an explicit false is a refusal.
    if reply.get("success", True) is False:
        lines = [f"Request failed: {reply.get('msg', '')}"]
        lines += [
            f"  item {i}: {r.get('msg')}"
            for i, r in enumerate(reply.get("results", []))
            if isinstance(r, dict) and not r.get("success", True)
        ]
        raise RequestRefused("\n".join(lines))
    click.echo(format_table(reply) if fmt == "table" else json.dumps(reply, indent=2))


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


def monitor_line(status: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_compact(status.get(k))}" for k in WATCHED)
    return f"{status.get('time', '')}  {fields}"
