# Built-in bluesky plans, a few plan stubs usable as plans, and plans for tests and demos.
from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.plan_stubs import mv, mvr, null, sleep  # noqa: F401
from bluesky.plans import (  # noqa: F401
    adaptive_scan,
    count,
    fly,
    grid_scan,
    inner_product_scan,
    list_grid_scan,
    list_scan,
    log_scan,
    ramp_plan,
    rel_adaptive_scan,
    rel_grid_scan,
    rel_list_grid_scan,
    rel_list_scan,
    rel_log_scan,
    rel_scan,
    rel_spiral,
    rel_spiral_fermat,
    rel_spiral_square,
    relative_inner_product_scan,
    scan,
    scan_nd,
    spiral,
    spiral_fermat,
    spiral_square,
    tune_centroid,
    tweak,
    x2x_scan,
)
from bluesky.protocols import Readable


def long_count(
    detectors: Sequence[Readable], num: int = 100, delay: float = 0.1, *, md: dict | None = None
):
    """Take `num` readings `delay` seconds apart, with a checkpoint at each: for pause tests.

    Parameters
    ----------
    detectors : list
        list of 'readable' objects
    num : int
        number of readings
    delay : float
        seconds between readings
    md : dict, optional
        metadata
    """
    md = {"plan_name": "long_count", **(md or {})}
    return (yield from count(detectors, num=num, delay=delay, md=md))


def sim_fail(msg: str = "Simulated plan failure"):
    """A plan that raises an exception: for tests of failed plans.

    Parameters
    ----------
    msg : str
        the message of the exception
    """
    yield from bps.null()
    raise RuntimeError(msg)


def sim_fail_large(size: int = 2_000_000):
    """A plan that fails with a report too large for one NATS message: for tests.

    The exception's message, and so the item's `msg` and `traceback`, are `size`
    characters long (more than 1 MiB by default).

    Parameters
    ----------
    size : int
        the length of the exception's message
    """
    yield from bps.null()
    raise RuntimeError("large failure report " + "x" * max(size - 21, 0))


def marked_up_count(
    detectors: Sequence[Readable],
    num: int = 1,
    delay: float = 0.0,
    *,
    md: dict[str, Any] | None = None,
):
    """Take readings from detectors, with annotated parameters.

    Parameters
    ----------
    detectors : list
        list of 'readable' objects
    num : int
        number of readings to take
    delay : float
        time delay in seconds between readings
    md : dict, optional
        metadata
    """
    md = {"plan_name": "marked_up_count", **(md or {})}
    return (yield from count(detectors, num=num, delay=delay, md=md))
