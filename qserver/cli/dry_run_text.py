"""`qserver --format table queue item dry-run`: a dry run's report as a reviewer reads it."""

from __future__ import annotations

from typing import Any


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:g}" if isinstance(value, float | int) else str(value)


def dry_run_text(reply: dict[str, Any]) -> str:
    """A few lines: the points, each motor against its limits, violations, detectors, time."""
    r = reply.get("report") or {}
    item = reply.get("item") or {}
    state = "complete" if r.get("complete") else "CUT SHORT"
    declared = r.get("num_points_declared")
    points = f"{r.get('num_points', 0)} points" + (
        f" (declared {declared})" if declared not in (None, r.get("num_points")) else ""
    )
    uid = item.get("item_uid", "")
    source = {
        "queue": f"queued item {uid}",
        "running": f"running item {uid}",
        "proposal": f"proposal {uid}",
    }.get(str(reply.get("source")), "the item given")
    lines = [
        f"{r.get('plan_name', item.get('name', ''))} ({source}): {points}, "
        f"{r.get('runs', 0)} run(s), {r.get('messages', 0)} messages, {state}"
    ]
    for m in r.get("motors", []):
        limits = m.get("limits")
        verdict = {True: "within limits", False: "OUTSIDE LIMITS", None: "limits unknown"}[
            m.get("within_limits")
        ]
        lim = f" limits [{_num(limits[0])}, {_num(limits[1])}]" if limits else ""
        lines.append(
            f"  motor {m['name']}: {_num(m.get('min'))} .. {_num(m.get('max'))} "
            f"({m.get('moves', 0)} moves, from {_num(m.get('start'))}){lim}: {verdict}"
        )
    for v in r.get("violations", []):
        lines.append(f"  VIOLATION {v.get('msg', '')}")
    if r.get("detectors"):
        lines.append(f"  detectors: {', '.join(r['detectors'])}")
    if r.get("flyers"):
        lines.append(f"  flyers: {', '.join(r['flyers'])}")
    duration = r.get("estimated_duration")
    if duration is not None:
        unknown = r.get("duration_unknown") or []
        more = f" + unknown time of {', '.join(unknown)}" if unknown else ""
        lines.append(f"  estimated duration: {duration:.1f} s{more}")
    lines += [f"  note: {n}" for n in r.get("notes", []) if not n.startswith("Not counted")]
    return "\n".join(lines)
