"""What may be queued: the existing plans and devices, the permissions, the allowed lists.

The existing lists come from the environment (an object in JetStream's object store), or,
before any environment was opened, from the profile's lists file. Permissions are part of
the queue log. Allowed lists are derived from both and cached per user group; their uids
are derived too, so they change exactly when the lists do.
"""

from __future__ import annotations

import functools
import logging
import pprint
import uuid
from pathlib import Path
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from qserver.errors import BadRequest, Refused
from qserver.jsutil import default_replicas
from qserver.plan_tools.validation import validate_plan
from qserver.protocol.items import QueueItem
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import ExistingLists

logger = logging.getLogger(__name__)

LISTS_OBJECT = "existing"
_NS = uuid.UUID("5b0e3f0a-7d51-4b8e-a0a4-1f6b0f2d9c11")


@functools.lru_cache(maxsize=64)
def _uid(*parts: str) -> str:
    # Cached: the status asks for four of these on every change (ADR 29).
    return str(uuid.uuid5(_NS, ":".join(parts)))


class PlanCatalog:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        lists_file: Path | None = None,
        permissions_file: Path | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self.lists_file = lists_file
        self.permissions_file = permissions_file
        self.existing: ExistingLists | None = None
        self.permissions: dict[str, Any] | None = None
        self.permissions_uid = ""
        self._allowed: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    # ----- loading -----

    async def load_lists(self) -> None:
        """The last lists the environment stored; else the profile's lists file, stored."""
        self._obs = await self._js.create_object_store(
            self._subjects.lists_bucket, replicas=default_replicas()
        )
        try:
            result = await self._obs.get(LISTS_OBJECT)
            assert result.data is not None
            self.set_existing(msgspec.json.decode(result.data, type=ExistingLists))
            return
        except (ObjectNotFoundError, NotFoundError):
            pass
        if self.lists_file is not None and self.lists_file.exists():
            lists = self.read_lists_file(self.lists_file)
            await self._obs.put(LISTS_OBJECT, msgspec.json.encode(lists))
            self.set_existing(lists)
            logger.info("existing plans and devices loaded from %s", self.lists_file)
        else:
            logger.warning("no lists of existing plans and devices are known yet")

    async def reload_lists(self) -> None:
        """Read the lists the environment just stored."""
        try:
            result = await self._obs.get(LISTS_OBJECT)
        except (ObjectNotFoundError, NotFoundError):
            return
        assert result.data is not None
        self.set_existing(msgspec.json.decode(result.data, type=ExistingLists))

    @staticmethod
    def read_lists_file(path: Path) -> ExistingLists:
        data = msgspec.json.decode(path.read_bytes())
        return ExistingLists(
            plans_existing=data["plans_existing"],
            devices_existing=data["devices_existing"],
            uid=data.get("uid") or _uid(path.read_text()),
        )

    def read_permissions_file(self) -> dict[str, Any]:
        from qserver.plan_tools.permissions import load_permissions_file

        if self.permissions_file is None:
            raise Refused("No permissions file is configured")
        return load_permissions_file(self.permissions_file)

    def check_permissions(self, permissions: dict[str, Any]) -> dict[str, Any]:
        from qserver.plan_tools.permissions import load_permissions

        return load_permissions(permissions)

    # ----- state -----

    def set_existing(self, lists: ExistingLists) -> None:
        self.existing = lists
        self._recompute()

    def set_permissions(self, permissions: dict[str, Any] | None, uid: str) -> None:
        self.permissions = permissions
        self.permissions_uid = uid
        self._recompute()

    def _recompute(self) -> None:
        self._allowed = {}
        if self.existing is None or self.permissions is None:
            return
        from qserver.plan_tools.permissions import allowed_lists

        self._allowed = allowed_lists(
            self.existing.plans_existing, self.existing.devices_existing, self.permissions
        )

    # ----- uids -----

    # Each list's own uid where the environment gives one (a script that adds only a device
    # leaves the plans' uids as they were, as the reference does).
    @property
    def _plans_uid(self) -> str:
        return (self.existing.plans_uid or self.existing.uid) if self.existing else ""

    @property
    def _devices_uid(self) -> str:
        return (self.existing.devices_uid or self.existing.uid) if self.existing else ""

    @property
    def plans_existing_uid(self) -> str:
        return _uid("plans", self._plans_uid)

    @property
    def devices_existing_uid(self) -> str:
        return _uid("devices", self._devices_uid)

    @property
    def plans_allowed_uid(self) -> str:
        return _uid("plans-allowed", self._plans_uid, self.permissions_uid)

    @property
    def devices_allowed_uid(self) -> str:
        return _uid("devices-allowed", self._devices_uid, self.permissions_uid)

    # ----- queries -----

    def allowed(self, user_group: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.existing is None:
            raise Refused(
                "The lists of existing plans and devices are not known yet: open the "
                "environment once ('qserver environment open') so that they are read"
            )
        if self.permissions is None:
            raise Refused(
                "No user group permissions are loaded: "
                "use 'permissions_set' or 'permissions_reload'"
            )
        if user_group not in self._allowed:
            raise BadRequest(f"Unknown user group: '{user_group}'")
        return self._allowed[user_group]

    def validate(self, item: QueueItem) -> None:
        """Check a plan against the submitter's allowed lists; instructions pass."""
        if item.item_type != "plan":
            return
        plans, devices = self.allowed(item.user_group)  # type: ignore[arg-type]
        try:
            validate_plan(msgspec.to_builtins(item), plans, devices)
        except BadRequest as e:
            # The reference's form: the reason, then the plan as it was submitted.
            sent = {
                k: v
                for k, v in msgspec.to_builtins(item).items()
                if k not in ("user", "user_group") and not (k in ("args", "kwargs") and not v)
            }
            raise BadRequest(f"Plan validation failed: {e.msg}\nPlan: {shown(sent)}") from None


def shown(obj: Any) -> str:
    """`obj` as the reference's messages print it: pformat in its own key order, lists cut
    after 10 elements, dicts after 30 keys, strings over 1,024 characters cut in the middle."""

    def cut(o: Any) -> Any:
        if isinstance(o, dict):
            out = {k: cut(v) for k, v in list(o.items())[:30]}
            if len(o) > 30:
                out["..."] = "..."
            return out
        if isinstance(o, str):
            return o if len(o) <= 1024 else o[:512] + " ...\n... " + o[-512:]
        if isinstance(o, list | tuple):
            return [cut(v) for v in o[:10]] + (["..."] if len(o) > 10 else [])
        return o

    return pprint.pformat(cut(obj), sort_dicts=False)
