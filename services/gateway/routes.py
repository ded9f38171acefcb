"""The route table: every HTTP route, the NATS method behind it and the scope it needs.

Two families: the bluesky-httpserver API under `/api/` (what `bluesky-queueserver-api`
calls), and the routes of the first release's README (`/queue/plan/add`, ...), whose
bodies are adapted to today's requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import msgspec
from msgspec import UNSET

from qserver.errors import BadRequest
from qserver.protocol.api import Empty
from qserver.protocol.http import LegacyPlanAdd, LegacyPosition

# Which identity fields the gateway sets from the caller's key (a client cannot set them).
Identity = Literal["", "user", "group", "lock"]
Adapt = Callable[[dict[str, Any]], dict[str, Any]]
_S = TypeVar("_S", bound=msgspec.Struct)


@dataclass(frozen=True)
class Route:
    path: str
    http: Literal["GET", "POST"]
    method: str  # `<prefix>.api.<method>`
    scope: str
    identity: Identity = ""
    adapt: Adapt | None = None  # turns an original-README body into today's params
    body: type[msgspec.Struct] | None = None  # the body's type, when not the method's
    fixed: tuple[tuple[str, Any], ...] = ()  # params the path itself implies


# ----- bodies of the original routes -----


def _convert(body: dict[str, Any], rtype: type[_S], what: str) -> _S:
    try:
        return msgspec.convert(body, rtype)
    except msgspec.ValidationError as e:
        raise BadRequest(f"Invalid request to '{what}': {e}") from None


def adapt_plan_add(body: dict[str, Any]) -> dict[str, Any]:
    req = _convert(body, LegacyPlanAdd, "/queue/plan/add")
    out: dict[str, Any] = {"item": {**msgspec.to_builtins(req.plan), "item_type": "plan"}}
    if req.pos is not UNSET:
        out["pos"] = req.pos
    return out


def adapt_position(body: dict[str, Any]) -> dict[str, Any]:
    req = _convert(body, LegacyPosition, "/queue/plan/get|remove")
    return {"pos": "back" if req.pos is UNSET else req.pos}


# ----- the bluesky-httpserver API -----


def _api() -> list[Route]:
    r = Route
    return [
        r("/api", "GET", "ping", "read:status"),
        r("/api/ping", "GET", "ping", "read:status"),
        r("/api/status", "GET", "status", "read:status"),
        r("/api/queue/get", "GET", "queue_get", "read:queue"),
        r("/api/queue/item/add", "POST", "queue_item_add", "write:queue:edit", "user"),
        r("/api/queue/item/add/batch", "POST", "queue_item_add_batch", "write:queue:edit", "user"),
        r("/api/queue/item/update", "POST", "queue_item_update", "write:queue:edit", "user"),
        r("/api/queue/item/get", "GET", "queue_item_get", "read:queue"),
        r("/api/queue/item/remove", "POST", "queue_item_remove", "write:queue:edit"),
        r("/api/queue/item/remove/batch", "POST", "queue_item_remove_batch", "write:queue:edit"),
        r("/api/queue/item/move", "POST", "queue_item_move", "write:queue:edit"),
        r("/api/queue/item/move/batch", "POST", "queue_item_move_batch", "write:queue:edit"),
        r("/api/queue/item/execute", "POST", "queue_item_execute", "write:execute", "user"),
        # A simulated run of a queued item, a proposal or an item body (ADR 31).
        r("/api/item/dry_run", "POST", "item_dry_run", "write:queue:edit", "user"),
        r("/api/queue/clear", "POST", "queue_clear", "write:queue:edit"),
        r("/api/queue/start", "POST", "queue_start", "write:queue:control"),
        r("/api/queue/stop", "POST", "queue_stop", "write:queue:control"),
        r("/api/queue/stop/cancel", "POST", "queue_stop_cancel", "write:queue:control"),
        r("/api/queue/autostart", "POST", "queue_autostart", "write:queue:control"),
        r("/api/queue/mode/set", "POST", "queue_mode_set", "write:queue:control"),
        r("/api/history/get", "GET", "history_get", "read:history"),
        # The console's backlog, kept by the history service (ADR 18).
        r("/api/console_output", "GET", "console_output", "read:console"),
        r("/api/console_output/uid", "GET", "console_output_uid", "read:console"),
        r("/api/console_output_update", "GET", "console_output_update", "read:console"),
        r("/api/history/clear", "POST", "history_clear", "write:history:edit"),
        r("/api/history/result/get", "GET", "history_result_get", "read:history"),
        r("/api/environment/open", "POST", "environment_open", "write:manager:control"),
        r("/api/environment/close", "POST", "environment_close", "write:manager:control"),
        r("/api/environment/destroy", "POST", "environment_destroy", "write:manager:control"),
        r("/api/environment/update", "POST", "environment_update", "write:queue:control"),
        r("/api/kernel/interrupt", "POST", "kernel_interrupt", "write:queue:control"),
        r("/api/re/pause", "POST", "re_pause", "write:plan:control"),
        r("/api/re/resume", "POST", "re_resume", "write:plan:control"),
        r("/api/re/stop", "POST", "re_stop", "write:plan:control"),
        r("/api/re/abort", "POST", "re_abort", "write:plan:control"),
        r("/api/re/halt", "POST", "re_halt", "write:plan:control"),
        r("/api/re/runs", "POST", "re_runs", "read:monitor"),
        *(
            r(
                f"/api/re/runs/{o}",
                "GET",
                "re_runs",
                "read:monitor",
                body=Empty,
                fixed=(("option", o),),
            )
            for o in ("active", "open", "closed")
        ),
        r("/api/re/metadata", "GET", "re_metadata", "read:monitor"),
        r("/api/plans/allowed", "GET", "plans_allowed", "read:resources", "group"),
        r("/api/devices/allowed", "GET", "devices_allowed", "read:resources", "group"),
        r("/api/plans/existing", "GET", "plans_existing", "read:resources"),
        r("/api/devices/existing", "GET", "devices_existing", "read:resources"),
        r("/api/permissions/reload", "POST", "permissions_reload", "write:config"),
        r("/api/permissions/get", "GET", "permissions_get", "read:config"),
        r("/api/permissions/set", "POST", "permissions_set", "write:permissions"),
        r("/api/function/execute", "POST", "function_execute", "write:execute", "user"),
        r("/api/script/upload", "POST", "script_upload", "write:scripts"),
        r("/api/task/status", "GET", "task_status", "read:monitor"),
        r("/api/task/result", "GET", "task_result", "read:monitor"),
        r("/api/lock", "POST", "lock", "write:lock", "lock"),
        r("/api/unlock", "POST", "unlock", "write:lock"),
        r("/api/lock/info", "GET", "lock_info", "read:lock"),
        # Proposals (ADR 30): items waiting for review. POST for `get` so that a browser's
        # fetch (no GET bodies) can ask for one with its dry run.
        r("/api/proposals/add", "POST", "proposal_add", "write:queue:propose", "user"),
        r("/api/proposals/list", "GET", "proposal_list", "read:queue"),
        r("/api/proposals/get", "POST", "proposal_get", "read:queue"),
        r("/api/proposals/update", "POST", "proposal_update", "write:queue:approve", "user"),
        r("/api/proposals/approve", "POST", "proposal_approve", "write:queue:approve", "user"),
        r("/api/proposals/reject", "POST", "proposal_reject", "write:queue:approve", "user"),
        r("/api/manager/stop", "POST", "manager_stop", "write:manager:stop"),
        r("/api/test/manager/kill", "POST", "manager_kill", "write:testing"),
    ]


# ----- the first release's routes (its README's `http` examples) -----


def _legacy() -> list[Route]:
    r = Route
    plan_add = r(
        "/queue/plan/add",
        "POST",
        "queue_item_add",
        "write:queue:edit",
        "user",
        adapt=adapt_plan_add,
        body=LegacyPlanAdd,
    )
    return [
        r("/", "GET", "ping", "read:status"),
        r("/status", "GET", "status", "read:status"),
        r("/environment/open", "POST", "environment_open", "write:manager:control"),
        r("/environment/close", "POST", "environment_close", "write:manager:control"),
        r("/environment/destroy", "POST", "environment_destroy", "write:manager:control"),
        r("/plans/allowed", "GET", "plans_allowed", "read:resources", "group"),
        r("/devices/allowed", "GET", "devices_allowed", "read:resources", "group"),
        plan_add,
        r("/queue/get", "GET", "queue_get", "read:queue"),
        *(
            r(
                f"/queue/plan/{verb}",
                "POST",
                f"queue_item_{verb}",
                scope,
                adapt=adapt_position,
                body=LegacyPosition,
            )
            for verb, scope in (("remove", "write:queue:edit"), ("get", "read:queue"))
        ),
        r("/queue/clear", "POST", "queue_clear", "write:queue:edit"),
        r("/queue/start", "POST", "queue_start", "write:queue:control"),
        r("/queue/stop", "POST", "queue_stop", "write:queue:control"),
        r("/queue/stop/cancel", "POST", "queue_stop_cancel", "write:queue:control"),
        r("/re/pause", "POST", "re_pause", "write:plan:control"),
        r("/re/resume", "POST", "re_resume", "write:plan:control"),
        r("/re/stop", "POST", "re_stop", "write:plan:control"),
        r("/re/abort", "POST", "re_abort", "write:plan:control"),
        r("/re/halt", "POST", "re_halt", "write:plan:control"),
        r("/re_halt", "POST", "re_halt", "write:plan:control"),
        r("/history/get", "GET", "history_get", "read:history"),
        r("/history/clear", "POST", "history_clear", "write:history:edit"),
        r("/manager/stop", "POST", "manager_stop", "write:manager:stop"),
        r("/test/manager/kill", "POST", "manager_kill", "write:testing"),
    ]


API_ROUTES = tuple(_api())
LEGACY_ROUTES = tuple(_legacy())
ROUTES = API_ROUTES + LEGACY_ROUTES
