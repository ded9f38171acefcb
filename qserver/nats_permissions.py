"""Who may publish and subscribe to what: the NATS users of one queue server, as server config.

One NATS account per queue server (beamline) keeps JetStream and subjects of different
beamlines apart; inside it, each service and each client role gets only its own subjects.
`deploy/nats/accounts.conf` is `render_accounts(...)` with passwords taken from environment
variables (a test fails when it is stale); tests render it with generated passwords.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass

from qserver.protocol.subjects import DEFAULT_PREFIX, check_prefix

# Requests that only read: what an observer may send.
READ_ONLY_METHODS = (
    "ping",
    "status",
    "queue_get",
    "queue_item_get",
    "history_get",
    "history_runs",
    "history_run_item",
    "plans_allowed",
    "devices_allowed",
    "plans_existing",
    "devices_existing",
    "permissions_get",
    "lock_info",
    "re_runs",
)
# JetStream API, acks, flow control, KV and object store, inside the account only.
JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>")
# Discovery and health of nats.micro services, and whether JetStream is on (`qserver doctor`).
DIAGNOSTICS = ("$SRV.>", "$JS.API.INFO")
INBOX = "_INBOX.>"


@dataclass(frozen=True, kw_only=True)
class Role:
    """One NATS user: what it is for, and the subjects it may publish and subscribe to."""

    name: str
    purpose: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def roles(prefix: str = DEFAULT_PREFIX) -> list[Role]:
    """The users of the queue server with subject prefix `prefix`."""
    check_prefix(prefix)
    api, events, internal, docs = (f"{prefix}.{p}.>" for p in ("api", "events", "internal", "docs"))
    service_sub = ("$SRV.>", INBOX)
    # Services reply to requests: publishing to inboxes. (`allow_responses` would be tighter,
    # but the history service, which also sees every request on `api.>`, got no replies out.)
    service_pub = ("$SRV.PING.>", INBOX)
    return [
        Role(
            name="queue",
            purpose="the queue service (both replicas)",
            publish=(events, internal, *JETSTREAM, *service_pub),
            subscribe=(api, internal, *service_sub),
        ),
        Role(
            name="history",
            purpose="the history service",
            publish=(events, internal, *JETSTREAM, *service_pub),
            subscribe=(api, internal, *service_sub),
        ),
        Role(
            name="worker",
            purpose="the worker service and the environment process it starts",
            publish=(events, docs, internal, *JETSTREAM, *service_pub),
            subscribe=(internal, *service_sub),
        ),
        Role(
            name="gateway",
            purpose="the HTTP gateway (it checks API keys itself and may call every method)",
            publish=(api,),
            subscribe=(events, INBOX),
        ),
        Role(
            name="operator",
            purpose="people and programs that drive the queue: every API method",
            publish=(api, *DIAGNOSTICS),
            subscribe=(events, docs, INBOX),
        ),
        Role(
            name="observer",
            purpose="read-only: status, events and read-only methods, no control",
            publish=(*(f"{prefix}.api.{m}" for m in READ_ONLY_METHODS), *DIAGNOSTICS),
            subscribe=(events, docs, INBOX),
        ),
    ]


def _subjects(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_user(role: Role, password: str) -> str:
    """One user entry; `password` is written as is (a `$VARIABLE` or a quoted string)."""
    lines = [
        f"      # {role.purpose}",
        f'      {{user: "{role.name}", password: {password}, permissions: {{',
        f"        publish: {{allow: {_subjects(role.publish)}}}",
        f"        subscribe: {{allow: {_subjects(role.subscribe)}}}",
    ]
    lines.append("      }}")
    return "\n".join(lines)


def render_accounts(
    passwords: Mapping[str, str], *, prefix: str = DEFAULT_PREFIX, account: str = "QS"
) -> str:
    """An `accounts {}` block: one JetStream-enabled account with a user per role.

    `passwords` maps each role name to what follows `password:` in the file: a `$VAR`
    reference (resolved by nats-server from its environment) or a JSON-quoted literal.
    """
    users = ",\n".join(render_user(r, passwords[r.name]) for r in roles(prefix))
    return (
        "accounts {\n"
        f"  {account}: {{\n"
        "    jetstream: enabled\n"
        "    users: [\n"
        f"{users}\n"
        "    ]\n"
        "  }\n"
        "}\n"
    )


def env_reference(role: str) -> str:
    """The environment variable nats-server reads a role's password from in the sample."""
    return f"$NATS_{role.upper()}_PASSWORD"


SAMPLE_HEADER = """\
# NATS users of one queue server (prefix {prefix}), one account per beamline.
# Generated by qserver.nats_permissions (tests/unit/test_nats_permissions.py fails when stale).
# Passwords come from nats-server's environment (NATS_<ROLE>_PASSWORD; deploy/example.env).
# A service or client connects as its role with QSERVER_NATS_USER / QSERVER_NATS_PASSWORD.
# Another beamline: copy the account with its own prefix, name and passwords.
"""


def sample_config(prefix: str = DEFAULT_PREFIX) -> str:
    """The committed `deploy/nats/accounts.conf`."""
    passwords = {r.name: env_reference(r.name) for r in roles(prefix)}
    return SAMPLE_HEADER.format(prefix=prefix) + render_accounts(passwords, prefix=prefix)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m qserver.nats_permissions",
        description="Print the NATS accounts config of one queue server (users per role).",
    )
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"its subject prefix (default {DEFAULT_PREFIX})"
    )
    print(sample_config(p.parse_args(argv).prefix), end="")


if __name__ == "__main__":
    main()
