# Devices the reference's simulated profile has beside ophyd.sim's, for the same tests:
# bare ophyd objects, a mock flyer, and two bundles whose parts are reached by dotted
# names (`sim_bundle_A.mtrs.x`, `sim_bundle_A.dets.det_A`).
import ophyd
from ophyd import Component
from ophyd.sim import MockFlyer, SynAxis, SynGauss, det, motor, motor1, motor2
from ophyd.utils import LimitError

custom_test_device = ophyd.Device(name="custom_test_device")
custom_test_signal = ophyd.Signal(name="custom_test_signal")
custom_test_flyer = MockFlyer("custom_test_flyer", det, motor, 1, 5, 20)


class SimStage(ophyd.Device):
    """Three simulated axes, movable together."""

    x = Component(SynAxis, labels={"motors"})
    y = Component(SynAxis, labels={"motors"})
    z = Component(SynAxis, labels={"motors"})

    def set(self, x: float, y: float, z: float) -> ophyd.status.StatusBase:
        """Move the three axes at once: this makes the stage a movable device."""
        return self.x.set(x) & self.y.set(y) & self.z.set(z)


class SimDetectors(ophyd.Device):
    """Two Gaussian peaks, one along `motor1` and one along `motor2`."""

    det_A = Component(
        SynGauss,
        motor=motor1,
        motor_field="motor1",
        center=0,
        Imax=5,
        sigma=0.5,
        labels={"detectors"},
    )
    det_B = Component(
        SynGauss,
        motor=motor2,
        motor_field="motor2",
        center=0,
        Imax=5,
        sigma=0.5,
        labels={"detectors"},
    )


class SimBundle(ophyd.Device):
    """A stage and its detectors: a device with sub-devices two levels deep."""

    mtrs = Component(SimStage)
    dets = Component(SimDetectors)


sim_bundle_A = SimBundle(name="sim_bundle_A")
sim_bundle_B = SimBundle(name="sim_bundle_B")


class SynAxisWithLimits(SynAxis):
    """A simulated motor with soft limits, as an EPICS motor has: a move outside fails."""

    def __init__(self, *, limits: tuple[float, float], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._limits = (float(limits[0]), float(limits[1]))

    @property
    def limits(self) -> tuple[float, float]:
        return self._limits

    def check_value(self, value: float) -> None:
        low, high = self._limits
        if not low <= value <= high:
            raise LimitError(f"{self.name}: {value} is outside the limits [{low}, {high}]")

    def set(self, value: float) -> ophyd.status.StatusBase:  # type: ignore[override]
        self.check_value(value)
        return super().set(value)


# Ours, beside the reference's devices: dry runs (ADR 31) report moves outside its limits.
motor_limited = SynAxisWithLimits(name="motor_limited", limits=(-5.0, 5.0), labels={"motors"})
