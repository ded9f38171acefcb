"""The plan simulator (ADR 31): bluesky plans against ophyd's simulated devices, none moved."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import pytest
from bluesky.utils import Msg
from ophyd import Signal
from ophyd.sim import SynAxis, SynGauss
from ophyd.utils import LimitError

from services.worker.env.simulate import PlanSimulator


class LimitedAxis(SynAxis):
    """Soft limits as an EPICS motor reports them."""

    def __init__(self, *, limits: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._limits = limits

    @property
    def limits(self) -> tuple[float, float]:
        return self._limits


class CheckedAxis(SynAxis):
    """No `limits`, only bluesky's `Checkable`: refuses targets above 3."""

    def check_value(self, value: float) -> None:
        if value > 3:
            raise LimitError(f"{value} is too far for {self.name}")


@pytest.fixture
def motor() -> SynAxis:
    return SynAxis(name="m", value=0.5)


@pytest.fixture
def det(motor: SynAxis) -> SynGauss:
    return SynGauss("d", motor, "m", center=0, Imax=1, sigma=1)


def simulate(plan: Any, name: str = "plan", **bounds: Any) -> Any:
    return PlanSimulator(**bounds).run(plan, name)


def test_a_scan_reports_its_points_motor_range_and_detectors(motor: SynAxis, det: SynGauss) -> None:
    r = simulate(bp.scan([det], motor, -1, 2, num=7), "scan")
    assert r.complete and r.num_points == 7 and r.num_points_declared == 7 and r.runs == 1
    assert r.events == {"primary": 7}
    (m,) = r.motors
    assert (m.name, m.start, m.min, m.max, m.moves) == ("m", 0.5, -1.0, 2.0, 7)
    assert m.limits is None and m.within_limits is None
    assert r.detectors == ["d"] and r.violations == []
    # Nothing reached the devices.
    assert motor.position == 0.5 and motor.setpoint.get() == 0.5


def test_a_relative_scan_starts_from_where_the_motor_is(motor: SynAxis, det: SynGauss) -> None:
    r = simulate(bp.rel_scan([det], motor, -1, 1, num=3))
    (m,) = r.motors
    # Out to 0.5 ± 1, then back to where it started.
    assert (m.min, m.max, m.moves) == (-0.5, 1.5, 4)
    assert motor.position == 0.5


def test_targets_outside_the_limits_are_named_with_the_worst_first(det: SynGauss) -> None:
    lim = LimitedAxis(name="lim", limits=(-5.0, 5.0))
    r = simulate(bp.list_scan([det], lim, [0, 7, -6, 9, 4]))
    (m,) = r.motors
    assert m.limits == [-5.0, 5.0] and m.within_limits is False
    (v,) = r.violations
    # The farthest beyond a limit first.
    assert v.device == "lim" and v.count == 3 and v.values == [9.0, 7.0, -6.0]
    assert "lim: 3 of 5 moves outside its limits" in v.msg
    assert "-6 is below the low limit -5" in v.msg and "9 is above the high limit 5" in v.msg


def test_a_device_without_limits_is_asked_by_its_check_value(det: SynGauss) -> None:
    checked = CheckedAxis(name="chk")
    r = simulate(bp.scan([det], checked, 0, 4, num=5))
    (v,) = r.violations
    assert v.device == "chk" and v.limits is None and v.values == [4.0]
    assert "4.0 is too far for chk" in v.msg
    assert r.motors[0].within_limits is False
    assert simulate(bp.scan([det], checked, 0, 3, num=4)).violations == []


def test_the_duration_adds_sleeps_moves_and_exposures_and_says_what_it_left_out() -> None:
    slow = SynAxis(name="slow", delay=0.5)
    other = SynAxis(name="other", delay=2.0)
    exposed = SynGauss("exposed", slow, "slow", center=0, Imax=1)
    exposed.exposure_time = 0.25
    unknown = Signal(name="unknown")  # no simulated delay, no velocity: time not known

    def plan() -> Generator[Msg, Any, None]:
        yield from bps.sleep(1.5)
        yield from bps.mv(slow, 1, other, 2)  # together: the longer move counts
        yield from bps.trigger_and_read([exposed])
        yield from bps.mv(unknown, 3)

    r = simulate(plan())
    assert r.estimated_duration == pytest.approx(1.5 + 2.0 + 0.25)
    assert r.duration_unknown == ["unknown"] and any("unknown" in n for n in r.notes)
    assert r.num_points == 1 and r.detectors == ["exposed"]


def test_an_endless_plan_is_cut_and_says_so(det: SynGauss) -> None:
    def endless() -> Generator[Msg, Any, None]:
        while True:
            yield from bps.null()

    r = simulate(endless(), max_messages=500)
    assert not r.complete and r.messages == 500 and r.estimated_duration is None
    assert r.notes == ["The dry run stopped after 500 messages"]


def test_an_error_of_the_plan_goes_to_the_caller(det: SynGauss) -> None:
    with pytest.raises(ValueError, match="num"):
        simulate(bp.scan([det], SynAxis(name="x"), 0, 1))
