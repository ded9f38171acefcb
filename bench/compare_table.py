"""The figures `make bench-compare` compares, their medians over rounds, ratios and the table.

Pure logic (no servers): tested by tests/unit/test_bench_compare.py.
A ratio is oriented so that > 1 means ours is better: reference / ours for a figure where
lower is better (latency, seconds, CPU, memory), ours / reference where higher is better
(operations per second).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Literal

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Row:
    key: str  # where the figure sits in a side's flat result
    label: str
    unit: str
    better: Better
    goal: float | None = None  # issue 14's goal for the ratio, where it names one


# Every row of issue 14's table, in its order; the `key`s are those the workloads report
# (bench/compare_workloads.py, bench/bench_compare.py).
ROWS: tuple[Row, ...] = (
    Row(
        "status_p50_ms",
        "status round trip p50 (2,000 calls; ours: nats-server's copy, ADR 35)",
        "ms",
        "lower",
        1.0,
    ),
    Row(
        "status_asked_p50_ms",
        "  status p50 asked of the queue service (reference: its status)",
        "ms",
        "lower",
        None,
    ),
    Row(
        "status_pushed_p50_ms",
        "  status p50 answered from a followed push (reference: its status)",
        "ms",
        "lower",
        10.0,
    ),
    Row(
        "status_zmq_p50_ms",
        "  status p50 over 0MQ, the reference's client (ours: the 0MQ bridge)",
        "ms",
        "lower",
        1.0,
    ),
    Row("item_add_ops_per_s", "queue_item_add, 1,000 sequential", "ops/s", "higher", 4.0),
    Row("queue_get_1000_p50_ms", "queue_get of 1,000 items, decoded, p50", "ms", "lower", 1.0),
    Row("fill_10000_s", "fill to 10,000 items (batches of 500)", "s", "lower", 1.0),
    Row("turnover_100_s", "turnover, 100 x count([det1], num=1)", "s", "lower", 1.0),
    Row("overhead_per_plan_ms", "  overhead per plan over a bare RunEngine", "ms", "lower", 40.0),
    Row("pause_immediate_ms", "pause immediate -> paused", "ms", "lower", 1.0),
    Row("resume_ms", "resume -> running", "ms", "lower", 1.0),
    Row("environment_open_s", "environment open", "s", "lower", 1.0),
    Row("manager_kill_s", "manager kill -> answering", "s", "lower", 1.0),
    Row("rss_core_mib", "RSS, core processes (no Kafka, no catalog)", "MiB", "lower", 1.0),
    Row("rss_all_mib", "RSS, every process of the stack", "MiB", "lower", None),
    # RSS counts every shared page (libpython, numpy, ...) once per process; PSS splits it
    # between the processes that share it: what a set of processes costs the machine.
    Row("pss_core_mib", "  PSS, core processes (shared pages split)", "MiB", "lower", None),
    Row("pss_all_mib", "  PSS, every process of the stack", "MiB", "lower", None),
    Row("http_status_1_req_s", "HTTP status, 1 client", "req/s", "higher", 5.0),
    # With one client, where the CPU per request went: every process of the side together,
    # and the measuring client (httpx, the same on both sides).
    Row("http_status_1_server_cpu_us", "  its servers' CPU per request", "µs", "lower"),
    Row("http_status_1_client_cpu_us", "  the client's (httpx) CPU per request", "µs", "lower"),
    Row("http_status_8_req_s", "HTTP status, 8 clients", "req/s", "higher", 5.0),
    Row("http_add_1_req_s", "HTTP item add, 1 client", "req/s", "higher", 5.0),
    Row("http_add_1_server_cpu_us", "  its servers' CPU per request", "µs", "lower"),
    Row("http_add_1_client_cpu_us", "  the client's (httpx) CPU per request", "µs", "lower"),
    Row("http_add_8_req_s", "HTTP item add, 8 clients", "req/s", "higher", 5.0),
    Row(
        "idle_cpu_s_per_min",
        "idle CPU, environment open (default stack)",
        "CPU-s/min",
        "lower",
        2.0,
    ),
    Row("idle_after_runs_cpu_s_per_min", "  idle CPU again after the runs", "CPU-s/min", "lower"),
)


def median(values: list[float]) -> float | None:
    """The median of the rounds that produced the figure; None if none did."""
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def ratio(ours: float | None, ref: float | None, better: Better) -> float | None:
    """> 1: ours is better. None when a side has no figure or a figure is zero."""
    if ours is None or ref is None or ours <= 0 or ref <= 0:
        return None
    return ref / ours if better == "lower" else ours / ref


def compare(
    ours_rounds: list[dict[str, Any]],
    ref_rounds: list[dict[str, Any]],
    rows: tuple[Row, ...] = ROWS,
) -> list[dict[str, Any]]:
    """One entry per row: each side's figure per round, their medians, the ratio of medians."""
    out = []
    for row in rows:
        ours = [r.get(row.key) for r in ours_rounds]
        ref = [r.get(row.key) for r in ref_rounds]
        m_ours, m_ref = median(ours), median(ref)  # type: ignore[arg-type]
        r = ratio(m_ours, m_ref, row.better)
        out.append(
            {
                "key": row.key,
                "label": row.label,
                "unit": row.unit,
                "better": row.better,
                "ours": ours,
                "reference": ref,
                "ours_median": m_ours,
                "reference_median": m_ref,
                "ratio": None if r is None else round(r, 2),
                "goal": row.goal,
                "meets_goal": None if r is None or row.goal is None else r >= row.goal,
            }
        )
    return out


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) >= 0.01 else f"{x:.2g}"


def _rounds(xs: list[float | None]) -> str:
    return " / ".join(_num(x) for x in xs)


def table(entries: list[dict[str, Any]]) -> str:
    """The comparison as aligned text: medians, each round's figures, ratio, goal."""
    head = (
        "workload",
        "unit",
        "ours",
        "reference",
        "ratio",
        "goal",
        "ours by round",
        "ref by round",
    )
    lines = [head]
    for e in entries:
        goal = "-" if e["goal"] is None else f">= {e['goal']:g}"
        if e["meets_goal"] is False:
            goal += " (missed)"
        lines.append(
            (
                e["label"],
                e["unit"],
                _num(e["ours_median"]),
                _num(e["reference_median"]),
                "-" if e["ratio"] is None else f"{e['ratio']:.2f}",
                goal,
                _rounds(e["ours"]),
                _rounds(e["reference"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i in (0, 1, 5, 6, 7) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        text.append("  ".join(cells).rstrip())
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def markdown(entries: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (for docs/benchmarks.md)."""
    head: tuple[str, ...] = (
        "workload",
        "unit",
        "ours",
        "reference",
        "ratio (> 1: ours better)",
        "goal",
    )
    head += ("ours, by round", "reference, by round")
    out = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for e in entries:
        r = "-" if e["ratio"] is None else f"{e['ratio']:.2f}"
        if e["meets_goal"] is True:
            r = f"**{r}**"
        goal = "-" if e["goal"] is None else f"≥ {e['goal']:g}"
        cells = [
            e["label"].strip(),
            e["unit"],
            _num(e["ours_median"]),
            _num(e["reference_median"]),
            r,
            goal,
            _rounds(e["ours"]),
            _rounds(e["reference"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":  # python -m bench.compare_table RESULT.json: the Markdown table
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text())["rows"]))
