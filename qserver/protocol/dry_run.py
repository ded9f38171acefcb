"""Dry runs: what a plan would do, from its messages answered by a simulator (ADR 31).

Public: `<prefix>.api.item_dry_run` (`api.ItemDryRun` -> `DryRunReply`). Internally the
queue service asks the environment, `<prefix>.internal.env.dry_run` (`EnvDryRun` ->
`EnvDryRunReply`), which runs the plan's generator against a simulator in a thread of its
own: nothing is sent to a device.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from qserver.protocol.api import Reply

DryRunSource = Literal["queue", "running", "proposal", "item"]
# Bounds of one simulation: a plan longer than this is reported cut (`complete: false`).
MAX_MESSAGES = 200_000
BUDGET_S = 10.0
# How long the queue service waits for the environment (describing devices and a busy
# machine add to the budget), and how long a client waits for the queue service.
ENV_TIMEOUT_S = BUDGET_S + 20.0
REPLY_TIMEOUT_S = ENV_TIMEOUT_S + 10.0


class MotorRange(msgspec.Struct, kw_only=True):
    """A device the plan sets (`set` messages): where it is and where the plan sends it."""

    name: str
    moves: int  # `set` messages to it
    start: float | None = None  # its position before the plan, where it has one
    min: float | None = None  # the lowest numeric target (None: no numeric target)
    max: float | None = None  # the highest numeric target
    # [low, high] as the device reports them (`limits`); None where it reports none.
    limits: list[float] | None = None
    within_limits: bool | None = None  # None: nothing to check against


class LimitViolation(msgspec.Struct, kw_only=True):
    """Targets of one device that its limits (or its own `check_value`) refuse."""

    device: str
    count: int  # how many `set` messages to it are refused
    values: list[Any]  # the refused targets, the extremes first (at most 10)
    limits: list[float] | None = None
    msg: str  # one line, naming the device, the worst target and the limit


class DryRunReport(msgspec.Struct, kw_only=True):
    plan_name: str
    complete: bool  # the plan's generator ran to its end (not cut by a bound)
    messages: int  # messages the plan yielded
    runs: int  # `open_run` messages
    num_points: int  # events in the `primary` stream
    num_points_declared: int | None = None  # the start document's `num_points`, if given
    events: dict[str, int] = msgspec.field(default_factory=dict)  # events per stream
    motors: list[MotorRange] = msgspec.field(default_factory=list)
    detectors: list[str] = msgspec.field(default_factory=list)  # triggered or read, not set
    flyers: list[str] = msgspec.field(default_factory=list)  # kicked off or collected
    violations: list[LimitViolation] = msgspec.field(default_factory=list)
    # Seconds: sleeps, moves and acquisitions whose times the devices tell; None if cut.
    estimated_duration: float | None = None
    duration_unknown: list[str] = msgspec.field(default_factory=list)  # not counted in it
    notes: list[str] = msgspec.field(default_factory=list)
    elapsed: float = 0.0  # seconds the simulation took


class DryRunReply(Reply, kw_only=True):
    item: dict[str, Any] | None = None  # the item simulated
    source: DryRunSource | None = None  # where it came from
    report: DryRunReport | None = None


# ----- queue service -> environment -----


class EnvDryRun(msgspec.Struct, frozen=True, kw_only=True):
    item: dict[str, Any]  # a plan item, validated by the queue service
    user_group: str


class EnvDryRunReply(msgspec.Struct, kw_only=True):
    success: bool = True
    msg: str = ""
    report: DryRunReport | None = None
