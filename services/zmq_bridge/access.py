"""Who a 0MQ request comes from, what it may call, and which identity it carries.

The connection gate (`gate.py`) names each connection: `local` (a process of the bridge's own
OS user, or root, over loopback) or `key:<n>` (the n-th client of the CurveZMQ keys file).
A local process can already act as any user through NATS with the stack's operator key, so
its `user` and `user_group` are passed on as sent, as the reference does. A keyed client gets
the user and group of its entry, whatever it sends, and only the methods of its access level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from qserver.protocol.api import REQUEST_TYPES
from qserver.protocol.methods import READ_ONLY_METHODS
from services.zmq_bridge.keys import Access, ClientKey

LOCAL = "local"
KEY_PREFIX = "key:"

# What an `observe` client may call: requests that change nothing.
READ_METHODS = (
    frozenset(READ_ONLY_METHODS) - {"console_output", "console_output_uid", "console_output_update"}
) | {"config_get"}
# What only `admin` clients may call: the scopes bluesky-httpserver gives experts and admins
# (write:manager:stop, write:testing, write:permissions, write:config, write:scripts, write:lock).
ADMIN_METHODS = frozenset(
    {
        "manager_stop",
        "manager_kill",
        "manager_test",
        "permissions_set",
        "permissions_reload",
        "script_upload",
        "lock",
        "unlock",
    }
)
IDENTITY_FIELDS = ("user", "user_group")


class Denied(Exception):
    """The caller may not make this request; `msg` is the reply's text."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


@dataclass(frozen=True)
class Principal:
    """The caller as the bridge sees it; `user`/`user_group` None: the client's own are kept."""

    name: str
    access: Access
    user: str | None = None
    user_group: str | None = None

    def allows(self, method: str) -> bool:
        if self.access == "admin":
            return True
        if self.access == "control":
            return method not in ADMIN_METHODS
        return method in READ_METHODS


OWNER = Principal("a process of this machine's stack user", "admin")


def principal_of(user_id: str | None, clients: Sequence[ClientKey]) -> Principal:
    """The principal the gate named the connection with (its ZAP `User-Id`)."""
    if user_id == LOCAL:
        return OWNER
    if user_id and user_id.startswith(KEY_PREFIX):
        try:
            c = clients[int(user_id.removeprefix(KEY_PREFIX))]
        except (ValueError, IndexError):
            pass
        else:
            return Principal(f"user '{c.user}' (CurveZMQ key)", c.access, c.user, c.user_group)
    raise Denied("The 0MQ connection was not authorized (no identity from the connection gate)")


def _fields(method: str) -> frozenset[str]:
    rtype = REQUEST_TYPES.get(method)
    if rtype is None:
        return frozenset()
    return frozenset(f.name for f in msgspec.structs.fields(rtype))


def authorize(principal: Principal, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The params to send on the caller's behalf; Denied if it may not call `method`."""
    if not principal.allows(method):
        raise Denied(
            f"Not enough permissions: {principal.name} has '{principal.access}' access, "
            f"which does not allow '{method}'"
        )
    forced = {"user": principal.user, "user_group": principal.user_group}
    if all(v is None for v in forced.values()):
        return params
    fields = _fields(method)
    out = dict(params)
    for name, value in forced.items():
        if value is not None and (name in out or name in fields):
            out[name] = value
    return out
