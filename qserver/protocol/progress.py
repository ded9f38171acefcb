"""Live progress of the running plan: the `<prefix>.events.progress` event (ADR 25).

The environment derives it from the run documents it publishes, at most ten a second per
run; the stream `QS_<PREFIX>_PROGRESS` keeps the last one, for readers that come later.
"""

from __future__ import annotations

import msgspec

# At most one progress event per this many seconds (per run): ~10 a second.
MIN_INTERVAL_S = 0.1


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """One progress event of a run."""

    time: float  # when it was made (Unix seconds)
    item_uid: str | None  # the queue item that made the run (`qserver_item_uid`)
    run_uid: str  # the start document's uid
    scan_id: int | None
    plan_name: str | None
    point: int  # events seen in the run's primary stream
    num_points: int | None  # the start document's `num_points`, else from its `shape`
    elapsed: float  # seconds since the start document
    eta: float | None  # seconds left, from the mean time per point so far
    motors: list[str] = []
    detectors: list[str] = []
    positions: dict[str, object] = {}  # each motor's last read value in the primary stream
    done: bool = False  # true once: the event of the stop document
    exit_status: str | None = None  # the stop document's


class ProgressSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The status's `progress` key: the running run's progress, compact."""

    run_uid: str
    point: int
    num_points: int | None
    elapsed: float
    eta: float | None


def summary(p: Progress) -> ProgressSummary:
    return ProgressSummary(
        run_uid=p.run_uid,
        point=p.point,
        num_points=p.num_points,
        elapsed=p.elapsed,
        eta=p.eta,
    )


progress_decoder = msgspec.json.Decoder(Progress)
