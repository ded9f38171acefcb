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

from qserver.protocol.subjects import DEFAULT_PREFIX, Subjects, check_prefix

# Requests that only read: what an observer may send.
READ_ONLY_METHODS = (
    "ping",
    "status",
    "queue_get",
    "queue_item_get",
    "history_get",
    "history_result_get",
    "history_runs",
    "history_run_item",
    "plans_allowed",
    "devices_allowed",
    "plans_existing",
    "devices_existing",
    "permissions_get",
    "lock_info",
    "re_runs",
    "console_output",
    "console_output_uid",
    "console_output_update",
)
# JetStream API, acks, flow control, KV and object store, inside the account only.
JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>")
# Discovery and health of nats.micro services (`qserver doctor`). Not the JetStream API: its
# replies go to any reply subject a client names, so `$JS.API.INFO` with a reply subject of
# a stream would let a client write into that stream (ADR 11).
DIAGNOSTICS = ("$SRV.>",)
# Replies: every user reads only its own inboxes, `_INBOX.<user>.` (`inbox_prefix`); services
# reply to anyone's.
ALL_INBOXES = "_INBOX.>"


def inbox_prefix(user: str) -> str:
    """The inbox prefix of a NATS user: it may subscribe to `<inbox_prefix>.>` only."""
    return f"_INBOX.{user}"


@dataclass(frozen=True, kw_only=True)
class Role:
    """One NATS user: what it is for, and the subjects it may publish and subscribe to."""

    name: str
    purpose: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    user: str = ""  # the user name, `<name><suffix>`

    @property
    def inbox(self) -> str:
        return inbox_prefix(self.user or self.name)


def roles(prefix: str = DEFAULT_PREFIX, user_suffix: str = "") -> list[Role]:
    """The users of the queue server with subject prefix `prefix`.

    Writes that change state are each allowed to their one writer: plan results
    (`internal.results`), worker and environment events to the worker side; commands to the
    worker and the environment to the queue service (and the worker, to its environment);
    the queue's and the history's logs to the queue service.
    """
    check_prefix(prefix)
    s = Subjects(prefix)
    api, events, internal, docs = (f"{prefix}.{p}.>" for p in ("api", "events", "internal", "docs"))
    worker_cmds, env_cmds = s.worker_cmd("*"), s.env_cmd("*")  # not `worker.events.state`

    def role(name: str, purpose: str, publish: tuple[str, ...], subscribe: tuple[str, ...]) -> Role:
        user = name + user_suffix
        own_inbox = f"{inbox_prefix(user)}.>"
        return Role(
            name=name,
            purpose=purpose,
            publish=publish,
            subscribe=(*subscribe, own_inbox),
            user=user,
        )

    # Services reply to requests: publishing to every inbox, and only there
    # (services.runtime.replies), so that a reply subject cannot aim their rights at a state
    # subject. `allow_responses` would not do: it lets a service publish once to whatever
    # reply subject a request names.
    service_pub = ("$SRV.PING.>", ALL_INBOXES)
    return [
        role(
            "queue",
            "the queue service (both replicas)",
            publish=(
                events,
                s.queue_log,
                s.history_log,
                s.history_info,
                worker_cmds,
                env_cmds,
                *JETSTREAM,
                *service_pub,
            ),
            subscribe=(api, internal, "$SRV.>"),
        ),
        role(
            "history",
            "the history service",
            publish=(events, s.history_changed, s.lock_check, *JETSTREAM, *service_pub),
            subscribe=(api, internal, "$SRV.>"),
        ),
        role(
            "worker",
            "the worker service and the environment process it starts",
            publish=(
                events,
                docs,
                s.results,
                s.worker_state,
                s.env_state,
                env_cmds,
                *JETSTREAM,
                *service_pub,
            ),
            subscribe=(internal, "$SRV.>"),
        ),
        role(
            "gateway",
            "the HTTP gateway (it checks API keys itself and may call every method)",
            publish=(api,),
            subscribe=(events,),
        ),
        role(
            "zmq_bridge",
            "the 0MQ bridge (it checks who connects itself and may call every method)",
            publish=(api,),
            subscribe=(events,),
        ),
        role(
            "operator",
            "people and programs that drive the queue: every API method",
            publish=(api, *DIAGNOSTICS),
            subscribe=(events, docs),
        ),
        role(
            "observer",
            "read-only: status, events and read-only methods, no control",
            publish=(*(f"{prefix}.api.{m}" for m in READ_ONLY_METHODS), *DIAGNOSTICS),
            subscribe=(events, docs),
        ),
    ]


def _subjects(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_user(role: Role, credential: str, indent: str = "      ") -> str:
    """One user entry; `credential` is `password: <$VARIABLE or quoted>` or `nkey: "<U...>"`."""
    name = "" if credential.startswith("nkey:") else f'user: "{role.user}", '
    return "\n".join(
        [
            f"{indent}# {role.purpose}",
            f"{indent}{{{name}{credential}, permissions: {{",
            f"{indent}  publish: {{allow: {_subjects(role.publish)}}}",
            f"{indent}  subscribe: {{allow: {_subjects(role.subscribe)}}}",
            f"{indent}}}}}",
        ]
    )


def render_nkey_users(public_keys: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """An `authorization {}` block (the server's global account) with an nkey user per role.

    What the embedded stack runs: `public_keys` maps each role to its user's public nkey.
    """
    users = ",\n".join(
        render_user(r, f"nkey: {json.dumps(public_keys[r.name])}", "    ") for r in roles(prefix)
    )
    return f"authorization {{\n  users: [\n{users}\n  ]\n}}\n"


@dataclass(frozen=True, kw_only=True)
class Beamline:
    """One queue server's account. User names are server-wide in NATS, so where several
    beamlines share a server each one's users carry a suffix (`queue-tst`)."""

    account: str
    prefix: str
    passwords: Mapping[str, str]  # role -> what follows `password:` ($VAR or "literal")
    user_suffix: str = ""


def render_account(b: Beamline) -> str:
    users = ",\n".join(
        render_user(r, f"password: {b.passwords[r.name]}") for r in roles(b.prefix, b.user_suffix)
    )
    return f"  {b.account}: {{\n    jetstream: enabled\n    users: [\n{users}\n    ]\n  }}\n"


def render_beamlines(beamlines: list[Beamline]) -> str:
    """One `accounts {}` block (nats-server takes one) with an account per beamline."""
    return "accounts {\n" + "".join(render_account(b) for b in beamlines) + "}\n"


def render_accounts(
    passwords: Mapping[str, str], *, prefix: str = DEFAULT_PREFIX, account: str = "QS"
) -> str:
    """An `accounts {}` block: one JetStream-enabled account with a user per role.

    `passwords` maps each role name to what follows `password:` in the file: a `$VAR`
    reference (resolved by nats-server from its environment) or a JSON-quoted literal.
    """
    return render_beamlines([Beamline(account=account, prefix=prefix, passwords=passwords)])


def env_reference(role: str, account: str = "") -> str:
    """The environment variable nats-server reads a role's password from in the sample."""
    return f"$NATS_{account.upper() + '_' if account else ''}{role.upper()}_PASSWORD"


SAMPLE_HEADER = """\
# NATS users of one queue server (prefix {prefix}), one account per beamline.
# Generated by services.stack.nats_permissions (its unit test fails when this is stale).
# Passwords come from nats-server's environment (NATS_<ROLE>_PASSWORD; deploy/example.env).
# A service or client connects as its role with QSERVER_NATS_USER / QSERVER_NATS_PASSWORD;
# each user reads replies on its own inboxes only (_INBOX.<user>., set from the user name).
# Another beamline: copy the account with its own prefix, name and passwords.
"""


def sample_config(prefix: str = DEFAULT_PREFIX) -> str:
    """The committed `deploy/nats/accounts.conf`."""
    passwords = {r.name: env_reference(r.name) for r in roles(prefix)}
    return SAMPLE_HEADER.format(prefix=prefix) + render_accounts(passwords, prefix=prefix)


def several_config(pairs: list[tuple[str, str]]) -> str:
    """Accounts for several queue servers on one NATS server: (account, prefix) each."""
    beamlines = [
        Beamline(
            account=account,
            prefix=prefix,
            passwords={r.name: env_reference(r.name, account) for r in roles(prefix)},
            user_suffix=f"-{account.lower()}",
        )
        for account, prefix in pairs
    ]
    header = (
        "# NATS users of several queue servers, one account each; user names end with the\n"
        "# account (queue-<account>), passwords come from NATS_<ACCOUNT>_<ROLE>_PASSWORD.\n"
        "# Generated by `python -m services.stack.nats_permissions"
        " --beamline ACCOUNT=PREFIX ...`.\n"
    )
    return header + render_beamlines(beamlines)


def beamline_pair(text: str) -> tuple[str, str]:
    account, sep, prefix = text.partition("=")
    if not sep or not account.isidentifier():
        raise argparse.ArgumentTypeError(f"expected ACCOUNT=PREFIX (e.g. TST=qs.tst), not {text!r}")
    try:
        check_prefix(prefix)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return account.upper(), prefix


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m services.stack.nats_permissions",
        description="Print the NATS accounts config of queue servers (a user per role).",
    )
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"its subject prefix (default {DEFAULT_PREFIX})"
    )
    p.add_argument(
        "--beamline",
        action="append",
        type=beamline_pair,
        metavar="ACCOUNT=PREFIX",
        help="one account per queue server sharing the NATS server (repeat it); replaces --prefix",
    )
    args = p.parse_args(argv)
    out = several_config(args.beamline) if args.beamline else sample_config(args.prefix)
    print(out, end="")


if __name__ == "__main__":
    main()
