"""`qserver proposal ...`: propose items for review, and review them (ADR 30)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import click

from qserver.cli.options import CONTEXT, FREE_ARGS, lock_key_option
from qserver.cli.runner import USER, Settings, connected, current_settings, send
from qserver.cli.words import make_item, parse_dest

group_option = click.option(
    "-g",
    "--group",
    envvar="QSERVER_USER_GROUP",
    default=USER["user_group"],
    show_default=True,
    help="The user group to act in [env QSERVER_USER_GROUP].",
)


def _who(group: str) -> dict[str, Any]:
    return {"user": USER["user"], "user_group": group}


@click.group(context_settings=CONTEXT)
def proposal() -> None:
    """Propose items for review; list, inspect, edit, approve or reject proposals.

    \b
    A gated group (a `proposals` key in the permissions file) proposes with `proposal add -g
    GROUP`; its members' queue adds by any client wait here too. Reviewing needs a group
    that is not gated (`-g`, default primary).
    """


@proposal.command("add", context_settings=FREE_ARGS)
@lock_key_option
@group_option
@click.option("-n", "--note", default="", help="A note for the reviewer.")
@click.argument("kind", type=click.Choice(["plan", "instruction"]))
@click.argument("text", metavar="JSON|queue-stop")
def proposal_add(group: str, note: str, kind: str, text: str) -> None:
    """Propose a plan or an instruction (it waits for review unless a rule approves it)."""
    send("proposal_add", {"item": make_item(kind, text), "note": note, **_who(group)})


@proposal.command("list")
def proposal_list() -> None:
    """The proposals waiting for review, oldest first."""
    send("proposal_list")


@proposal.command("get")
@click.option("--dry-run", is_flag=True, help="With the environment's dry run of the item.")
@click.argument("uid")
def proposal_get(uid: str, dry_run: bool) -> None:
    """One proposal: its item, who proposed it, when and why."""
    send("proposal_get", {"uid": uid, "dry_run": dry_run})


@proposal.command("edit", context_settings=FREE_ARGS)
@group_option
@click.option("-n", "--note", default=None, help="A new note.")
@click.argument("uid")
@click.argument("text", required=False, metavar="[JSON]")
def proposal_edit(group: str, note: str | None, uid: str, text: str | None) -> None:
    """Change a proposal's plan (checked as its proposer's) and/or its note."""
    params: dict[str, Any] = {"uid": uid, **_who(group)}
    if text is not None:
        params["item"] = make_item("plan", text)
    if note is not None:
        params["note"] = note
    send("proposal_update", params)


@proposal.command("approve", context_settings=FREE_ARGS)
@lock_key_option
@group_option
@click.argument("uid")
@click.argument("where", nargs=-1, metavar="[front|back|POS|before UID|after UID]")
def proposal_approve(group: str, uid: str, where: tuple[str, ...]) -> None:
    """Move a proposal into the queue (default: at the back)."""
    send("proposal_approve", {"uid": uid, **parse_dest(list(where)), **_who(group)})


@proposal.command("reject")
@group_option
@click.argument("uid")
@click.argument("reason")
def proposal_reject(group: str, uid: str, reason: str) -> None:
    """Turn a proposal down; it goes to the history as `rejected` with the reason."""
    send("proposal_reject", {"uid": uid, "reason": reason, **_who(group)})


@proposal.command("watch")
@click.option("--user", "who", default=None, help="Only the proposals of this proposer.")
@click.option("--count", type=int, default=None, help="Stop after this many events.")
def proposal_watch(who: str | None, count: int | None) -> None:
    """Print each change of a proposal as a JSON line, as it happens (a proposer waits here
    for approved or rejected)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(current_settings(), who, count))


async def _watch(settings: Settings, who: str | None, count: int | None) -> None:
    async with connected(settings) as client:
        seen = 0
        async for ev in client.proposal_events():
            if who is not None and ev.get("proposed_by") != who:
                continue
            click.echo(json.dumps(ev), nl=True)
            seen += 1
            if count is not None and seen >= count:
                return
