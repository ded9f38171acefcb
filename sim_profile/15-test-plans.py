# Plans the reference's simulated profile has for its tests and demos, with the same names
# and parameters: moves then counts, nested runs, a count of bundle parts, progress bars.
from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.plans import count
from bluesky.protocols import Movable, Readable
from bluesky.utils import ProgressBar
from ophyd.sim import det, det1, det2, motor, motor1, motor2


def move_then_count(
    motors: list[Movable],
    detectors: list[Readable] | None = None,
    positions: list[float] | None = None,
):
    """Move motors into positions; then count dets.

    Parameters
    ----------
    motors : list
        Motors to move to `positions` before the measurement
    detectors : list, optional
        Detectors to use for the measurement (det1 and det2 if not given)
    positions : list of float
        One position per motor
    """
    positions = list(positions or [])
    if len(motors) != len(positions):
        raise ValueError(
            f"Give one position per motor: {len(motors)} motors, {len(positions)} positions"
        )
    targets = [value for pair in zip(motors, positions, strict=True) for value in pair]
    yield from bps.mv(*targets)
    yield from count([det1, det2] if detectors is None else detectors)


def _sim_plan_inner(npts: int, delay: float = 1.0):
    """The inner run of `sim_multirun_plan_nested` (run key `run_2`): `npts` readings."""

    def readings():
        for j in range(npts):
            yield from bps.mv(motor1, 1 + 0.1 * j, motor2, -2 + 0.2 * j)
            yield from bps.trigger_and_read([motor1, motor2, det2])
            yield from bps.sleep(delay)

    return (yield from bpp.set_run_key_wrapper(bpp.run_wrapper(readings(), md={}), "run_2"))


def sim_multirun_plan_nested(npts: int, delay: float = 1.0):
    """Simulated multi-run plan: two nested runs. The plan is included for testing purposes only.

    Parameters
    ----------
    npts : int
        The number of measurements in the outer run. Inner run will contain 'npts+1'
        measurements.
    delay : float
        Delay between measurements.
    """

    def readings(steps: range):
        for j in steps:
            yield from bps.mv(motor, 0.2 * j)
            yield from bps.trigger_and_read([motor, det])
            yield from bps.sleep(delay)

    def outer():
        yield from readings(range(npts // 2))
        yield from _sim_plan_inner(npts + 1, delay)
        yield from readings(range(npts // 2, npts))

    return (yield from bpp.set_run_key_wrapper(bpp.run_wrapper(outer(), md={}), "run_1"))


def count_bundle_test(
    detectors: Sequence[Readable],
    num: int = 1,
    delay: float | None = None,
    *,
    per_shot: Any = None,
    md: dict[str, Any] | None = None,
):
    """Count detectors given as parts of bundles (`sim_bundle_A.dets.det_A`) or whole."""
    return (yield from count(detectors, num=num, delay=delay, per_shot=per_shot, md=md))


class _ManualStatus:
    """Just what ProgressBar asks of a status; the plan sets the progress itself."""

    def __init__(self) -> None:
        self.done = False

    def watch(self, callback: Any) -> None:
        pass


def plan_test_progress_bars(n_progress_bars: int = 1):
    """Test visualization of progress bars.

    Parameters
    ----------
    n_progress_bars : int
        The number of progress bars to display.
    """
    n_bars = max(n_progress_bars, 1)
    statuses = [_ManualStatus() for _ in range(n_bars)]
    bars = ProgressBar(statuses)
    steps = 10
    print(f"TESTING {n_bars} PROGRESS BARS ...\n")
    for step in range(1, steps + 1):
        yield from bps.sleep(0.5)
        for n in range(n_bars):
            bars.update(
                n,
                name=f"TEST{n + 1}",
                current=step / steps,
                initial=0,
                target=1,
                fraction=(step - 1) / steps,
            )
    for status in statuses:
        status.done = True
    for n in range(n_bars):
        bars.update(n, name=f"TEST{n + 1}", current=1, initial=0, target=1, fraction=1)
    print("\n" * n_bars + "\nTEST COMPLETED ...")
