"""Bodies that exist only at the HTTP gateway (the rest are the NATS requests of `api.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from qserver.protocol.api import Pos


class HttpBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the gateway's own request bodies: unknown fields are errors."""


class NoParams(HttpBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A route without parameters: no body, or `{}`."""


class LegacyPlan(HttpBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A plan as the first release's README writes one."""

    name: str
    item_type: Literal["plan"] | UnsetType = UNSET  # implied; accepted for today's clients
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    meta: dict[str, Any] | list[dict[str, Any]] | UnsetType = UNSET


class LegacyPlanAdd(HttpBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /queue/plan/add` of the first release: a plan and where to put it."""

    plan: LegacyPlan
    pos: Pos | UnsetType = UNSET


class LegacyPosition(HttpBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /queue/plan/get|remove` of the first release: a position (default: the back)."""

    pos: Pos | UnsetType = UNSET


class ServerSleep(HttpBody, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`GET /api/test/server/sleep`: answer after `time` seconds (clients test timeouts)."""

    time: Annotated[float, msgspec.Meta(le=600)]


class ErrorDetail(msgspec.Struct, kw_only=True):
    """Every 4xx/5xx answer of the gateway: what went wrong, in words."""

    detail: str
