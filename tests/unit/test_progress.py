"""Progress from run documents (ADR 25): the tracker's numbers and the publisher's rate bound."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import msgspec

from qserver.cli.output import progress_bar
from qserver.protocol.progress import MIN_INTERVAL_S
from qserver.protocol.subjects import Subjects
from services.worker.env.progress import ProgressPublisher, ProgressTracker

START = {
    "uid": "r1",
    "time": 100.0,
    "scan_id": 7,
    "plan_name": "scan",
    "num_points": 4,
    "motors": ["motor"],
    "detectors": ["det"],
    "qserver_item_uid": "item-1",
}


def documents(n: int = 4, start: dict[str, Any] = START) -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", start),
        ("descriptor", {"uid": "d1", "run_start": start["uid"], "name": "primary"}),
        ("descriptor", {"uid": "d2", "run_start": start["uid"], "name": "baseline"}),
        ("event", {"descriptor": "d2", "seq_num": 1, "data": {"motor": -5.0}}),
    ]
    for i in range(n):
        data = {"motor": float(i), "motor_setpoint": float(i), "det": 1.0}
        docs.append(("event", {"descriptor": "d1", "seq_num": i + 1, "data": data}))
    docs.append(("stop", {"run_start": start["uid"], "exit_status": "success"}))
    return docs


def test_points_count_the_primary_stream_only_and_positions_are_the_motors_last() -> None:
    t = ProgressTracker()
    docs = documents()
    for name, doc in docs[:6]:  # start, descriptors, a baseline event, two primary events
        t.update(name, doc, 101.0)
    p = t.progress("r1", 102.0)
    assert p is not None
    assert (p.point, p.num_points, p.positions) == (2, 4, {"motor": 1.0})
    assert (p.item_uid, p.scan_id, p.plan_name) == ("item-1", 7, "scan")
    assert p.elapsed == 2.0 and p.eta == 2.0  # 1 s a point, two to go
    assert not p.done and p.exit_status is None


def test_the_stop_document_gives_done_once_and_forgets_the_run() -> None:
    t = ProgressTracker()
    for name, doc in documents():
        t.update(name, doc, 103.0)
    p = t.progress("r1", 104.0)
    assert p is not None and p.done and p.exit_status == "success"
    assert (p.point, p.eta) == (4, 0.0)
    assert t.progress("r1", 105.0) is None


def test_num_points_falls_back_to_the_shape_and_else_is_unknown() -> None:
    t = ProgressTracker()
    t.update("start", {**START, "uid": "g", "num_points": None, "shape": [3, 5]}, 100.0)
    t.update("start", {**START, "uid": "u", "num_points": None}, 100.0)
    assert t.progress("g", 101.0).num_points == 15  # type: ignore[union-attr]
    unknown = t.progress("u", 101.0)
    assert unknown is not None and unknown.num_points is None and unknown.eta is None


def test_event_pages_count_each_point() -> None:
    t = ProgressTracker()
    for name, doc in documents(0)[:3]:
        t.update(name, doc, 100.0)
    page = {"descriptor": "d1", "seq_num": [1, 2, 3], "data": {"motor": [0.0, 0.5, 1.0]}}
    assert t.update("event_page", page, 100.5) == "r1"
    p = t.progress("r1", 101.0)
    assert p is not None and p.point == 3 and p.positions == {"motor": 1.0}


class FakeLink:
    """The environment's NATS link, on the test's loop; publications recorded with a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.nc = self
        self.sent: list[tuple[float, dict[str, Any]]] = []

    def soon(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append((time.monotonic(), msgspec.json.decode(data)))


async def test_a_fast_run_is_published_at_most_every_tenth_of_a_second_and_its_end_always() -> None:
    link = FakeLink(asyncio.get_running_loop())
    pub = ProgressPublisher(link, Subjects("qs.unit"))  # type: ignore[arg-type]
    start = {**START, "num_points": 400}
    docs = documents(400, start)

    def run_engine() -> None:  # the RunEngine's thread: ~2.5 ms a point, ~1 s in all
        for name, doc in docs:
            pub(name, doc)
            if name == "event":
                time.sleep(0.0025)

    thread = threading.Thread(target=run_engine)
    thread.start()
    while thread.is_alive() or not link.sent or not link.sent[-1][1]["done"]:
        await asyncio.sleep(0.02)
    thread.join()
    times = [t for t, _ in link.sent]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and min(gaps) >= MIN_INTERVAL_S * 0.99
    assert len(link.sent) < 40  # not one per point
    last = link.sent[-1][1]
    assert (
        last["done"] and last["point"] == 400 and [e for _, e in link.sent if e["done"]] == [last]
    )


def test_the_monitor_bar_shows_point_eta_and_positions() -> None:
    t = ProgressTracker()
    for name, doc in documents()[:6]:
        t.update(name, doc, 101.0)
    p = t.progress("r1", 102.0)
    line = progress_bar(msgspec.to_builtins(p), width=10)
    assert "scan 7 scan" in line and "[#####.....]" in line and "2/4  50%" in line
    assert "ETA 2.0 s" in line and "motor=1" in line
    done = progress_bar({**msgspec.to_builtins(p), "done": True, "exit_status": "success"})
    assert "done: success" in done and "ETA" not in done
