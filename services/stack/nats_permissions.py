"""Who may publish and subscribe to what: the NATS users of one queue server, as server config.

One NATS account per queue server (beamline) keeps JetStream and subjects of different
beamlines apart; inside it, each service and each client role gets only its own subjects.
`deploy/nats/accounts.conf` is `render_accounts(...)` with passwords taken from environment
variables (a test fails when it is stale); tests render it with generated passwords.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from qserver.protocol.methods import GATED_METHODS, READ_ONLY_METHODS
from qserver.protocol.subjects import (
    DEFAULT_PREFIX,
    IDENTITY_METHODS,
    NO_GROUP,
    Subjects,
    check_prefix,
    identity_token,
)

# Requests that only read: what an observer may send (qserver/protocol/api.py).
READ_IDENTITY = ("plans_allowed", "devices_allowed")  # read-only, but per group
# JetStream API, acks, flow control, KV and object store, inside the account only.
JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>")
# Discovery and health of nats.micro services (`qserver doctor`). Not the JetStream API: its
# replies go to any reply subject a client names, so `$JS.API.INFO` with a reply subject of
# a stream would let a client write into that stream (ADR 11).
DIAGNOSTICS = ("$SRV.>",)
# Replies: every user reads only its own inboxes, `_INBOX.<user>.` (`inbox_prefix`); services
# reply to anyone's.
ALL_INBOXES = "_INBOX.>"


def stream_read_access(stream: str) -> tuple[str, ...]:
    """The JetStream API to read one stream: its info, a message, an ordered consumer.

    What the gateway needs to replay the open run's documents and read the last progress
    event (ADR 25); no other stream, and no write.
    """
    return (
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def kv_bucket_access(bucket: str) -> tuple[str, ...]:
    """The JetStream API of one KV bucket only: open or create it, read, write, watch, scan.

    What the gateway needs for its logins (ADR 23); its requests cannot reach other streams.
    A scan fetches from a pull consumer (`qserver.jsutil.kv_scan`).
    """
    stream = f"KV_{bucket}"
    info, *read = stream_read_access(stream)  # and creating it, and its keys' subjects
    scan = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>"
    return (info, f"$JS.API.STREAM.CREATE.{stream}", *read, scan, f"$KV.{bucket}.>")


def status_read(prefix: str) -> str:
    """The last status event from nats-server: a JetStream direct get (ADR 35).

    Granted to the embedded stack's `operator` only (`render_nkey_users`). JetStream sends
    its answer to whatever reply subject the asker names, from inside the account, past
    every permission: into any stream or KV bucket of the account too. In the embedded stack
    the holder of `operator.nk` holds every role's key (one owner, one 0700 directory), so
    the grant gives nobody a power they lack; in a facility's accounts config it would.
    """
    return Subjects(prefix).status_direct_get


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
    deny_publish: tuple[str, ...] = ()  # exceptions to `publish`

    @property
    def inbox(self) -> str:
        return inbox_prefix(self.user or self.name)


OPERATOR_GROUPS = ("primary",)  # the user groups the shared `operator` user may act in


def acting(
    prefix: str, user: str, groups: Sequence[str], methods: Iterable[str] = IDENTITY_METHODS
) -> tuple[str, ...]:
    """The identity subjects of `user`: its own name, its groups only (ADR 24)."""
    identity_token(user)
    s = Subjects(prefix)
    out = []
    for method in methods:
        if IDENTITY_METHODS[method][1]:
            out += [s.api_as(user, identity_token(g, "user group"), method) for g in groups]
        else:
            out.append(s.api_as(user, NO_GROUP, method))
    return tuple(out)


def person(
    prefix: str, name: str, groups: Sequence[str], purpose: str = "", user_suffix: str = ""
) -> Role:
    """A person (or program) that drives the queue as itself, in its groups only."""
    user = name + user_suffix
    return Role(
        name=name,
        purpose=purpose or f"{name}: drives the queue as '{user}', in groups {', '.join(groups)}",
        publish=(f"{prefix}.api.>", *acting(prefix, user, groups), *DIAGNOSTICS),
        deny_publish=tuple(f"{prefix}.api.{m}" for m in IDENTITY_METHODS),
        subscribe=(f"{prefix}.events.>", f"{prefix}.docs.>", f"{inbox_prefix(user)}.>"),
        user=user,
    )


# What a proposer sends as itself (ADR 30): adds, which its gated group turns into proposals.
PROPOSER_IDENTITY = (
    "queue_item_add",
    "queue_item_add_batch",
    "proposal_add",
    "plans_allowed",
    "devices_allowed",
    "item_dry_run",  # an identity method where dry runs are (ADR 31)
)


def proposer(
    prefix: str, name: str, groups: Sequence[str], purpose: str = "", user_suffix: str = ""
) -> Role:
    """A person or program of a gated group (an agent): reads, and proposes as itself.

    Nothing else of the API reaches the queue from it: NATS refuses its other requests, and
    the queue service turns its adds into proposals (ADR 30).
    """
    user = name + user_suffix
    reads = sorted(m for m in GATED_METHODS if m not in IDENTITY_METHODS)
    return Role(
        name=name,
        purpose=purpose
        or f"{name}: reads and proposes items for review as '{user}', in groups "
        f"{', '.join(groups)}",
        publish=(
            *(f"{prefix}.api.{m}" for m in reads),
            *acting(prefix, user, groups, [m for m in PROPOSER_IDENTITY if m in IDENTITY_METHODS]),
            *DIAGNOSTICS,
        ),
        subscribe=(f"{prefix}.events.>", f"{prefix}.docs.>", f"{inbox_prefix(user)}.>"),
        user=user,
    )


def roles(
    prefix: str = DEFAULT_PREFIX,
    user_suffix: str = "",
    people: Mapping[str, Sequence[str]] | None = None,
    operator_groups: Sequence[str] = OPERATOR_GROUPS,
    proposers: Mapping[str, Sequence[str]] | None = None,
) -> list[Role]:
    """The users of the queue server with subject prefix `prefix`.

    Writes that change state are each allowed to their one writer: plan results
    (`internal.results`), worker and environment events to the worker side; commands to the
    worker and the environment to the queue service (and the worker, to its environment);
    the queue's and the history's logs to the queue service.
    """
    check_prefix(prefix)
    s = Subjects(prefix)
    api, events, internal, docs = (f"{prefix}.{p}.>" for p in ("api", "events", "internal", "docs"))
    vouched = f"{prefix}.as.>"  # requests whose identity NATS vouches for (ADR 24)
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
                s.leader_ping("*"),  # a standby's "alive?" to the leader (ADR 28)
                worker_cmds,
                env_cmds,
                s.api("item_dry_run"),  # for a proposal's review (ADR 30)
                *JETSTREAM,
                *service_pub,
            ),
            # progress: the status's `progress` (ADR 25); the leader hears writes of its
            # lease key (ADR 28).
            subscribe=(
                api,
                vouched,
                internal,
                s.progress_event,
                "$SRV.>",
                f"$KV.{s.leader_bucket}.>",
            ),
        ),
        role(
            "history",
            "the history service",
            publish=(events, s.history_changed, s.lock_check, *JETSTREAM, *service_pub),
            subscribe=(api, vouched, internal, "$SRV.>"),
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
            "the HTTP gateway (it checks API keys and logins itself and may call every method; "
            "its logins live in one KV bucket)",
            publish=(
                api,
                *kv_bucket_access(s.auth_bucket),
                *stream_read_access(s.docs_stream),
                *stream_read_access(s.progress_stream),
            ),
            subscribe=(events, docs),
        ),
        role(
            "zmq_bridge",
            "the 0MQ bridge (it checks who connects itself and may call every method)",
            publish=(api,),
            subscribe=(events,),
        ),
        person(
            prefix,
            "operator",
            operator_groups,
            "people and programs that drive the queue: every API method, as 'operator'"
            f" in groups {', '.join(operator_groups)}",
            user_suffix,
        ),
        role(
            "observer",
            "read-only: status, events and read-only methods, no control",
            publish=(
                *(f"{prefix}.api.{m}" for m in READ_ONLY_METHODS if m not in IDENTITY_METHODS),
                *acting(prefix, "observer" + user_suffix, operator_groups, READ_IDENTITY),
                *DIAGNOSTICS,
            ),
            subscribe=(events, docs),
        ),
        *(person(prefix, n, g, user_suffix=user_suffix) for n, g in (people or {}).items()),
        *(proposer(prefix, n, g, user_suffix=user_suffix) for n, g in (proposers or {}).items()),
    ]


def _subjects(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def render_user(role: Role, credential: str, indent: str = "      ") -> str:
    """One user entry; `credential` is `password: <$VARIABLE or quoted>` or `nkey: "<U...>"`."""
    deny = f", deny: {_subjects(role.deny_publish)}" if role.deny_publish else ""
    name = "" if credential.startswith("nkey:") else f'user: "{role.user}", '
    return "\n".join(
        [
            f"{indent}# {role.purpose}",
            f"{indent}{{{name}{credential}, permissions: {{",
            f"{indent}  publish: {{allow: {_subjects(role.publish)}{deny}}}",
            f"{indent}  subscribe: {{allow: {_subjects(role.subscribe)}}}",
            f"{indent}}}}}",
        ]
    )


def render_nkey_users(public_keys: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> str:
    """An `authorization {}` block (the server's global account) with an nkey user per role.

    What the embedded stack runs: `public_keys` maps each role to its user's public nkey.
    Its `operator` may also read the last status from nats-server (`status_read`).
    """
    users = ",\n".join(
        render_user(
            dataclasses.replace(r, publish=(*r.publish, status_read(prefix)))
            if r.name == "operator"
            else r,
            f"nkey: {json.dumps(public_keys[r.name])}",
            "    ",
        )
        for r in roles(prefix)
    )
    return f"authorization {{\n  users: [\n{users}\n  ]\n}}\n"


@dataclass(frozen=True, kw_only=True)
class Beamline:
    """One queue server's account. User names are server-wide in NATS, so where several
    beamlines share a server each one's users carry a suffix (`queue-tst`)."""

    account: str
    prefix: str
    passwords: Mapping[str, str]  # role or person -> what follows `password:` ($VAR or "literal")
    user_suffix: str = ""
    people: Mapping[str, Sequence[str]] | None = None  # person -> the user groups it acts in
    proposers: Mapping[str, Sequence[str]] | None = None  # the same, for gated groups (ADR 30)


def render_account(b: Beamline) -> str:
    users = ",\n".join(
        render_user(r, f"password: {b.passwords[r.name]}")
        for r in roles(b.prefix, b.user_suffix, b.people, proposers=b.proposers)
    )
    return f"  {b.account}: {{\n    jetstream: enabled\n    users: [\n{users}\n    ]\n  }}\n"


def render_beamlines(beamlines: list[Beamline]) -> str:
    """One `accounts {}` block (nats-server takes one) with an account per beamline."""
    return "accounts {\n" + "".join(render_account(b) for b in beamlines) + "}\n"


def render_accounts(
    passwords: Mapping[str, str],
    *,
    prefix: str = DEFAULT_PREFIX,
    account: str = "QS",
    people: Mapping[str, Sequence[str]] | None = None,
    proposers: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """An `accounts {}` block: one JetStream-enabled account with a user per role.

    `passwords` maps each role name to what follows `password:` in the file: a `$VAR`
    reference (resolved by nats-server from its environment) or a JSON-quoted literal.
    """
    beamline = Beamline(
        account=account, prefix=prefix, passwords=passwords, people=people, proposers=proposers
    )
    return render_beamlines([beamline])


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


def sample_config(
    prefix: str = DEFAULT_PREFIX,
    people: Mapping[str, Sequence[str]] | None = None,
    proposers: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The committed `deploy/nats/accounts.conf` (with `people`: one user each, ADR 24;
    `proposers`: users of gated groups, ADR 30)."""
    passwords = {
        r.name: env_reference(r.name.replace("-", "_"))
        for r in roles(prefix, people=people, proposers=proposers)
    }
    return SAMPLE_HEADER.format(prefix=prefix) + render_accounts(
        passwords, prefix=prefix, people=people, proposers=proposers
    )


def person_groups(text: str) -> tuple[str, list[str]]:
    name, sep, groups = text.partition("=")
    try:
        identity_token(name)
        listed = [identity_token(g, "user group") for g in groups.split(",") if g]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not sep or not listed:
        raise argparse.ArgumentTypeError(f"expected NAME=GROUP[,GROUP...], not {text!r}")
    return name, listed


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
    p.add_argument(
        "--person",
        action="append",
        type=person_groups,
        metavar="NAME=GROUP[,GROUP...]",
        help="a user who acts as NAME in these user groups only (repeat it; password from "
        "$NATS_<NAME>_PASSWORD)",
    )
    p.add_argument(
        "--proposer",
        action="append",
        type=person_groups,
        metavar="NAME=GROUP[,GROUP...]",
        help="a user of gated groups (an agent): reads and proposes items for review as NAME, "
        "nothing else (repeat it; password from $NATS_<NAME>_PASSWORD; ADR 30)",
    )
    args = p.parse_args(argv)
    people = dict(args.person or [])
    proposers = dict(args.proposer or [])
    out = (
        several_config(args.beamline)
        if args.beamline
        else sample_config(args.prefix, people, proposers)
    )
    print(out, end="")


if __name__ == "__main__":
    main()
