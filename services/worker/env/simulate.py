"""A plan's messages answered by bluesky's `RunEngineSimulator`: nothing reaches a device.

What the answers need from the devices is only read from them, and only once each: names,
`position` (where a relative plan starts), `limits` and `check_value` (bluesky's
`Checkable`), `describe()` (the keys of a simulated reading) and the times a move or an
acquisition takes (`delay`/`exposure_time` of ophyd's simulated devices, `velocity` and
`acceleration` of a motor, `count_time`). A plan whose own code calls devices directly,
outside its messages, does so here too: only messages are simulated (ADR 31).
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from bluesky.simulators import RunEngineSimulator
from bluesky.utils import Msg

from qserver.protocol.dry_run import (
    BUDGET_S,
    MAX_MESSAGES,
    DryRunReport,
    LimitViolation,
    MotorRange,
)

MAX_CHECKS = 10_000  # `check_value` calls per device; the extremes are always checked
SHOWN_VALUES = 10
# While a plan runs, a dry run (one Python thread beside the RunEngine's, sharing the GIL)
# works in slices and rests between them: at most a quarter of the process, never holding
# the RunEngine up for more than a slice at a time (ADR 31).
SLICE_S = 0.0005
REST_S = 0.0015


class Cut(Exception):
    """The simulation reached a bound (messages or time)."""


_simulating = threading.local()


class _StacklessOnDryRuns:
    """`traceback` as `bluesky.utils` sees it: no stack on a thread that simulates a plan.

    Every plan stub bluesky wraps in `bluesky.utils.Plan` records the caller's stack
    (`traceback.format_stack()`) for a "never iterated" warning: measured, 85 % of a
    simulation's time. On other threads (the RunEngine's) nothing changes.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)

    def format_stack(self, *args: Any, **kwargs: Any) -> list[str]:
        if getattr(_simulating, "active", False):
            return []
        return traceback.format_stack(*args, **kwargs)


def _skip_stacks() -> None:
    from bluesky import utils

    if getattr(utils, "traceback", None) is traceback:
        utils.traceback = _StacklessOnDryRuns()  # type: ignore[assignment]


def _name(obj: Any) -> str:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else repr(obj)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _signal_value(obj: Any, attr: str) -> float | None:
    """A number from an attribute, or from a signal's cached value (`get()`), else None."""
    try:
        value = getattr(obj, attr, None)
        if value is not None and not isinstance(value, numbers.Real) and hasattr(value, "get"):
            value = value.get()
    except Exception:
        return None
    return _number(value)


def device_limits(obj: Any) -> list[float] | None:
    """[low, high] if the device reports usable limits (EPICS' (0, 0) means none)."""
    try:
        limits = getattr(obj, "limits", None)
    except Exception:
        return None
    if not isinstance(limits, tuple | list) or len(limits) != 2:
        return None
    low, high = _number(limits[0]), _number(limits[1])
    if low is None or high is None or low >= high:
        return None
    return [low, high]


def move_time(obj: Any, distance: float | None) -> float | None:
    """Seconds a move takes where the device tells, else None."""
    if hasattr(obj, "sim_state"):  # ophyd.sim's SynAxis: a fixed simulated delay per move
        return _signal_value(obj, "delay")
    velocity = _signal_value(obj, "velocity")
    if velocity is None or velocity <= 0 or distance is None:
        return None
    accel = _signal_value(obj, "acceleration") or 0.0
    return abs(distance) / velocity + (accel if distance else 0.0)


def acquire_time(obj: Any) -> float | None:
    """Seconds a trigger takes where the device tells, else None."""
    for attr in ("exposure_time", "count_time", "acquire_time"):
        t = _signal_value(obj, attr)
        if t is not None:
            return t
    return None


@dataclass
class _Axis:
    obj: Any
    start: float | None
    position: float | None
    targets: list[Any] = field(default_factory=list)


@dataclass
class _Tally:
    """What the plan's messages did, message by message."""

    axes: dict[int, _Axis] = field(default_factory=dict)
    detectors: dict[int, Any] = field(default_factory=dict)
    flyers: dict[int, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    bundle: str | None = None
    runs: int = 0
    declared: int | None = None
    duration: float = 0.0
    unknown: dict[str, None] = field(default_factory=dict)  # names, in order
    groups: dict[Any, float] = field(default_factory=dict)  # longest pending action per group
    readings: dict[int, dict[str, Any]] = field(default_factory=dict)
    acquire: dict[int, float | None] = field(default_factory=dict)  # per device, asked once


class PlanSimulator:
    """Runs one plan's generator against a `RunEngineSimulator` and reports what it did."""

    def __init__(
        self,
        max_messages: int = MAX_MESSAGES,
        budget_s: float = BUDGET_S,
        plan_running: Callable[[], bool] = lambda: False,
    ) -> None:
        self.max_messages = max_messages
        self.budget_s = budget_s
        self.plan_running = plan_running  # rest between slices while this says so
        self.rested = 0.0
        self.t = _Tally()
        self.messages = 0

    def run(self, plan: Generator[Msg, Any, Any], plan_name: str) -> DryRunReport:
        """Simulate; an exception of the plan's own goes out to the caller."""
        sim = RunEngineSimulator()
        handlers: dict[str, Callable[[Msg], Any]] = {
            "set": self._set,
            "read": self._read,
            "locate": self._locate,
            "trigger": self._trigger,
            "sleep": self._sleep,
            "wait": self._wait,
            "create": self._create,
            "save": self._save,
            "drop": self._drop,
            "open_run": self._open_run,
            "close_run": lambda msg: str(uuid.uuid4()),
            "kickoff": self._fly,
            "complete": self._fly,
            "collect": self._fly,
            "configure": lambda msg: ({}, {}),
            "subscribe": lambda msg: 0,
            "input": lambda msg: "",
        }
        for command, handler in handlers.items():
            sim.add_handler(command, handler)
        _skip_stacks()
        t0 = time.monotonic()
        notes: list[str] = []
        complete = True
        _simulating.active = True
        try:
            sim.simulate_plan(self._bounded(plan, t0))
        except Cut as e:
            complete = False
            notes.append(str(e))
            plan.close()
        finally:
            _simulating.active = False
        if self.rested:
            notes.append(f"Slowed down beside a running plan (rested {self.rested:.1f} s)")
        return self._report(plan_name, complete, notes, time.monotonic() - t0)

    def _bounded(self, plan: Generator[Msg, Any, Any], t0: float) -> Generator[Msg, Any, Any]:
        """The plan's messages, cut after `max_messages` or `budget_s`; resting while a
        plan runs."""
        reply: Any = None
        slice_start = t0
        while True:
            try:
                msg = plan.send(reply)
            except StopIteration as e:
                return e.value
            self.messages += 1
            if self.messages > self.max_messages:
                raise Cut(f"The dry run stopped after {self.max_messages} messages")
            now = time.monotonic()
            if now - t0 > self.budget_s:
                raise Cut(f"The dry run stopped after {self.budget_s:g} s")
            if now - slice_start > SLICE_S:
                if self.plan_running():
                    time.sleep(REST_S)  # lets the RunEngine's thread have the GIL
                    self.rested += REST_S
                slice_start = time.monotonic()
            reply = yield msg

    # ----- answers -----

    def _axis(self, obj: Any) -> _Axis:
        axis = self.t.axes.get(id(obj))
        if axis is None:
            start = _signal_value(obj, "position")
            axis = self.t.axes[id(obj)] = _Axis(obj=obj, start=start, position=start)
        return axis

    def _set(self, msg: Msg) -> None:
        axis = self._axis(msg.obj)
        target = msg.args[0] if msg.args else None
        axis.targets.append(target)
        value = _number(target)
        distance = (
            value - axis.position if value is not None and axis.position is not None else None
        )
        if value is not None:
            axis.position = value
        self._pending(msg, move_time(msg.obj, distance), msg.obj)

    def _pending(self, msg: Msg, seconds: float | None, obj: Any) -> None:
        """An action that a `wait` on its group waits for (or that happens at once)."""
        if seconds is None:
            self.t.unknown.setdefault(_name(obj), None)
            seconds = 0.0
        group = msg.kwargs.get("group")
        if group is None:
            self.t.duration += seconds
        else:
            self.t.groups[group] = max(self.t.groups.get(group, 0.0), seconds)

    def _wait(self, msg: Msg) -> None:
        group = msg.kwargs.get("group")
        if group is None:
            return
        self.t.duration += self.t.groups.pop(group, 0.0)

    def _sleep(self, msg: Msg) -> None:
        seconds = _number(msg.args[0]) if msg.args else None
        self.t.duration += max(seconds or 0.0, 0.0)

    def _trigger(self, msg: Msg) -> None:
        obj = msg.obj
        self._detector(obj)
        # A scan triggers its motors too: an ophyd device without an acquisition is done
        # at once.
        if id(obj) not in self.t.acquire:
            self.t.acquire[id(obj)] = acquire_time(obj)
        seconds = self.t.acquire[id(obj)]
        self._pending(msg, 0.0 if seconds is None and id(obj) in self.t.axes else seconds, obj)

    def _detector(self, obj: Any) -> None:
        # Devices the plan also sets are its motors: the report leaves them out here.
        self.t.detectors.setdefault(id(obj), obj)

    def _read(self, msg: Msg) -> dict[str, Any]:
        obj = msg.obj
        if self.t.bundle is not None:  # read into an event: a detector (or a motor)
            self._detector(obj)
        axis = self.t.axes.get(id(obj))
        return self._reading(obj, axis.position if axis is not None else None)

    def _reading(self, obj: Any, position: float | None) -> dict[str, Any]:
        """A reading with the device's keys: its position where it moved, else zeros."""
        keys = self.t.readings.get(id(obj))
        if keys is None:
            try:
                keys = dict(obj.describe())
            except Exception:
                keys = {_name(obj): {"dtype": "number"}}
            self.t.readings[id(obj)] = keys
        now = time.time()
        out: dict[str, Any] = {}
        for key, desc in keys.items():
            dtype = desc.get("dtype") if isinstance(desc, dict) else None
            value: Any = 0.0
            if dtype == "string":
                value = ""
            elif dtype == "array":
                value = []
            elif position is not None:
                value = position
            out[key] = {"value": value, "timestamp": now}
        return out

    def _locate(self, msg: Msg) -> Any:
        objs = [msg.obj, *msg.args]
        found = []
        for obj in objs:
            pos = self._axis(obj).position
            pos = 0.0 if pos is None else pos
            found.append({"setpoint": pos, "readback": pos})
        if len(found) == 1 and msg.kwargs.get("squeeze", True):
            return found[0]
        return found

    def _create(self, msg: Msg) -> None:
        self.t.bundle = msg.kwargs.get("name", msg.args[0] if msg.args else "primary")

    def _save(self, msg: Msg) -> None:
        name = str(self.t.bundle or "primary")
        self.t.events[name] = self.t.events.get(name, 0) + 1
        self.t.bundle = None

    def _drop(self, msg: Msg) -> None:
        self.t.bundle = None

    def _open_run(self, msg: Msg) -> str:
        self.t.runs += 1
        declared = msg.kwargs.get("num_points")
        if self.t.declared is None and isinstance(declared, int):
            self.t.declared = declared
        return str(uuid.uuid4())

    def _fly(self, msg: Msg) -> None:
        self.t.flyers.setdefault(id(msg.obj), msg.obj)
        self.t.unknown.setdefault(_name(msg.obj), None)

    # ----- the report -----

    def _report(
        self, plan_name: str, complete: bool, notes: list[str], elapsed: float
    ) -> DryRunReport:
        t = self.t
        motors, violations = [], []
        for axis in t.axes.values():
            motor, violation = check_axis(axis.obj, axis.start, axis.targets)
            motors.append(motor)
            if violation is not None:
                violations.append(violation)
        if t.unknown:
            notes.append(
                "Not counted in the estimated duration (their times are not known): "
                + ", ".join(t.unknown)
            )
        return DryRunReport(
            plan_name=plan_name,
            complete=complete,
            messages=min(self.messages, self.max_messages),
            runs=t.runs,
            num_points=t.events.get("primary", 0),
            num_points_declared=t.declared,
            events=dict(t.events),
            motors=motors,
            detectors=[_name(o) for k, o in t.detectors.items() if k not in t.axes],
            flyers=[_name(o) for o in t.flyers.values()],
            violations=violations,
            estimated_duration=round(t.duration, 6) if complete else None,
            duration_unknown=list(t.unknown),
            notes=notes,
            elapsed=round(elapsed, 6),
        )


def check_axis(
    obj: Any, start: float | None, targets: Iterable[Any]
) -> tuple[MotorRange, LimitViolation | None]:
    """The device's range against its limits, and what they (or `check_value`) refuse."""
    targets = list(targets)
    name = _name(obj)
    numbers_ = [v for v in (_number(t) for t in targets) if v is not None]
    low_t, high_t = (min(numbers_), max(numbers_)) if numbers_ else (None, None)
    limits = device_limits(obj)
    refused: list[tuple[Any, str]] = []
    if limits is not None:
        lo, hi = limits
        for v in numbers_:
            if v < lo:
                refused.append((v, f"{v:g} is below the low limit {lo:g}"))
            elif v > hi:
                refused.append((v, f"{v:g} is above the high limit {hi:g}"))
    else:
        refused = _checked(obj, targets)
    motor = MotorRange(
        name=name,
        moves=len(targets),
        start=start,
        min=low_t,
        max=high_t,
        limits=limits,
        # None: nothing said (no limits, and no `check_value` that refused something).
        within_limits=False if refused else None if limits is None else True,
    )
    if not refused:
        return motor, None
    # The worst first: farthest beyond a limit (with limits), else the lowest and highest.
    if limits is not None:
        lo, hi = limits
        refused.sort(key=lambda r: -max(lo - r[0], r[0] - hi))
        worst = [r for r in refused if r[0] < lo][:1] + [r for r in refused if r[0] > hi][:1]
    else:
        nums = [v for v, _ in refused if _number(v) is not None]
        worst = [refused[0]]
        if nums:
            lo_v, hi_v = min(nums), max(nums)
            worst = [r for r in refused if r[0] == lo_v][:1] + [r for r in refused if r[0] == hi_v][
                :1
            ]
    shown: list[Any] = []
    for v, _ in refused if limits is not None else worst + refused:
        plain = _plain(v)
        if plain not in shown and len(shown) < SHOWN_VALUES:
            shown.append(plain)
    reasons = "; ".join(dict.fromkeys(why for _, why in worst))
    return motor, LimitViolation(
        device=name,
        count=len(refused),
        values=shown,
        limits=limits,
        msg=f"{name}: {len(refused)} of {len(targets)} moves outside its limits ({reasons})",
    )


def _plain(value: Any) -> Any:
    """A target as JSON has it: numbers as floats, strings as they are, others as repr."""
    number = _number(value)
    if number is not None:
        return number
    return value if isinstance(value, str | bool | None) else repr(value)


def _checkable(obj: Any) -> bool:
    return callable(getattr(obj, "check_value", None))


def _checked(obj: Any, targets: list[Any]) -> list[tuple[Any, str]]:
    """Targets the device's own `check_value` refuses (a synchronous one only)."""
    if not _checkable(obj):
        return []
    nums = [t for t in targets if _number(t) is not None]
    others = [t for t in targets if _number(t) is None]
    extremes = [min(nums), max(nums)] if nums else []
    distinct = list(dict.fromkeys([*extremes, *nums, *others]))[:MAX_CHECKS]
    refused = []
    for value in distinct:
        try:
            ret = obj.check_value(value)
        except Exception as e:
            refused.append((value, f"{e}" or type(e).__name__))
            continue
        close = getattr(ret, "close", None)
        if callable(close):  # a coroutine (ophyd-async): not awaited on this thread
            close()
            break
    if not refused:
        return []
    bad = set(map(repr, (v for v, _ in refused)))
    why = dict((repr(v), w) for v, w in refused)
    return [(t, why[repr(t)]) for t in targets if repr(t) in bad]
