"""The comparison logic of `make bench-compare` (bench/compare_table.py): no servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare_table import ROWS, Row, compare, median, ratio, table

LOWER = Row("lat_ms", "latency", "ms", "lower", 2.0)
HIGHER = Row("ops", "throughput", "ops/s", "higher", 4.0)


def test_ratio_is_oriented_so_that_above_one_means_ours_is_better() -> None:
    # Lower is better: ours 1 ms against the reference's 3 ms is 3x better.
    assert ratio(1.0, 3.0, "lower") == pytest.approx(3.0)
    assert ratio(3.0, 1.0, "lower") == pytest.approx(1 / 3)
    # Higher is better: ours 2,000 ops/s against 500 is 4x better.
    assert ratio(2000.0, 500.0, "higher") == pytest.approx(4.0)
    assert ratio(500.0, 2000.0, "higher") == pytest.approx(0.25)


def test_no_ratio_without_both_figures() -> None:
    assert ratio(None, 3.0, "lower") is None
    assert ratio(1.0, None, "higher") is None
    assert ratio(0.0, 3.0, "lower") is None  # a zero figure is a failed measurement


def test_median_skips_rounds_without_the_figure() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, None, 4.0]) == 2.5  # type: ignore[list-item]
    assert median([]) is None


def test_compare_takes_the_ratio_of_medians_and_checks_the_goal() -> None:
    ours = [{"lat_ms": 1.0, "ops": 900.0}, {"lat_ms": 3.0, "ops": 1100.0}, {"lat_ms": 2.0}]
    ref = [{"lat_ms": 5.0, "ops": 500.0}, {"lat_ms": 3.0, "ops": 400.0}, {"lat_ms": 4.0}]
    lat, ops = compare(ours, ref, (LOWER, HIGHER))
    assert lat["ours"] == [1.0, 3.0, 2.0]
    assert (lat["ours_median"], lat["reference_median"]) == (2.0, 4.0)
    assert lat["ratio"] == 2.0 and lat["meets_goal"] is True
    # The third round has no "ops": the medians are over the rounds that have one.
    assert ops["ours"] == [900.0, 1100.0, None]
    assert (ops["ours_median"], ops["reference_median"]) == (1000.0, 450.0)
    assert ops["ratio"] == 2.22 and ops["meets_goal"] is False


def test_a_side_that_failed_every_round_gives_no_ratio() -> None:
    (lat,) = compare([{"lat_ms": 1.0}], [{}], (LOWER,))
    assert lat["reference_median"] is None
    assert lat["ratio"] is None and lat["meets_goal"] is None


def test_table_shows_medians_rounds_ratio_and_missed_goals() -> None:
    entries = compare(
        [{"lat_ms": 1.0, "ops": 900.0}, {"lat_ms": 3.0, "ops": 1100.0}],
        [{"lat_ms": 5.0, "ops": 500.0}, {"lat_ms": 3.0, "ops": 400.0}],
        (LOWER, HIGHER),
    )
    lines = table(entries).splitlines()
    assert lines[0].split()[:5] == ["workload", "unit", "ours", "reference", "ratio"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    lat = lines[2].split()
    assert lat[:5] == ["latency", "ms", "2", "4", "2.00"]
    assert ">= 2" in lines[2] and "(missed)" not in lines[2]
    assert "1 / 3" in lines[2] and "5 / 3" in lines[2]  # each round's figures
    assert "2.22" in lines[3] and "(missed)" in lines[3]
    # Every row has the same width up to the ratio column (right-aligned numbers).
    col = lines[0].index("ratio") + len("ratio")
    assert lines[2][col - 4 : col] == "2.00" and lines[3][col - 4 : col] == "2.22"


def test_every_row_of_issue_14_is_compared() -> None:
    keys = {r.key for r in ROWS}
    for key in (
        "status_p50_ms",
        "item_add_ops_per_s",
        "queue_get_1000_p50_ms",
        "fill_10000_s",
        "turnover_100_s",
        "overhead_per_plan_ms",
        "pause_immediate_ms",
        "resume_ms",
        "environment_open_s",
        "manager_kill_s",
        "rss_core_mib",
        "http_status_1_req_s",
        "http_status_8_req_s",
        "http_add_1_req_s",
        "http_add_8_req_s",
        "idle_cpu_s_per_min",
    ):
        assert key in keys
    assert len(keys) == len(ROWS)  # no key twice


def test_core_processes_leave_out_http_kafka_catalog_and_the_bridge() -> None:
    from bench.bench_compare import _core

    core = ["supervisor", "nats-server", "queue", "worker", "history", "environment"]
    core += ["watchdog", "manager", "worker (environment)", "redis-server"]
    rest = ["gateway", "zmq_bridge", "kafka broker", "catalog (tiled)", "httpserver"]
    assert all(_core(r) for r in core)
    assert not any(_core(r) for r in rest)


def test_py_spy_stacks_are_split_by_the_part_above_the_event_loop(tmp_path: Path) -> None:
    from bench.profile_requests import py_spy_summary

    base = "<module> (services/queue/__main__.py:176);run (uvloop/__init__.py:92);"
    base += "Runner.run (asyncio/runners.py:118)"
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"{base} 6\n"  # in uvloop's C code: no Python frame above the loop
        f"{base};Client._flusher (nats/aio/client.py:2363) 2\n"
        f"{base};Endpoint._handle_request (nats/micro/service.py:255);"
        "serve_method (services/runtime/service_base.py:106) 1\n"
        f"{base};StreamReader.feed_data (asyncio/streams.py:501) 1\n"
    )
    got = py_spy_summary(raw)
    assert got["active_samples"] == 10
    shares = got["share_by_part"]
    assert shares["event loop itself (uvloop, syscalls)"] == 0.6
    assert shares["nats-py (read loop, parser, flusher, micro)"] == 0.2
    assert shares["the service's own code (handlers, status, events)"] == 0.1
    assert shares["asyncio (streams, futures, queues)"] == 0.1


def test_markdown_table_marks_the_ratios_that_meet_their_goal() -> None:
    from bench.compare_table import markdown

    entries = compare(
        [{"lat_ms": 1.0, "ops": 900.0}], [{"lat_ms": 5.0, "ops": 500.0}], (LOWER, HIGHER)
    )
    lines = markdown(entries).splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---")
    assert "| latency | ms | 1 | 5 | **5.00** | ≥ 2 |" in lines[2]
    assert "| throughput | ops/s | 900 | 500 | 1.80 | ≥ 4 |" in lines[3]
