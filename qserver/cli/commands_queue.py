"""`qserver queue ...`: edit, inspect and run the plan queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qserver.cli.errors import BadParams, RequestRefused
from qserver.cli.options import CONTEXT, FREE_ARGS, lock_key_option, simple
from qserver.cli.output import show
from qserver.cli.runner import USER, ask, current_settings, send, send_and_render
from qserver.cli.words import (
    batch_items,
    make_item,
    parse_batch_move,
    parse_dest,
    parse_mode,
    parse_move,
)
from qserver.legacy import pos_or_uid


@click.group(context_settings=CONTEXT)
def queue() -> None:
    """Edit, inspect and run the plan queue."""


KIND = click.Choice(["plan", "instruction"])


@queue.command("add", context_settings=FREE_ARGS)
@lock_key_option
@click.argument("kind", type=click.Choice(["plan", "instruction", "batch"]))
@click.argument(
    "words",
    nargs=-1,
    required=True,
    metavar="[front|back|POS|before UID|after UID] JSON|queue-stop",
)
def queue_add(kind: str, words: tuple[str, ...]) -> None:
    """Add a plan, an instruction or a batch (a JSON list of items)."""
    *where, text = words
    dest = parse_dest(where)
    if kind == "batch":
        send("queue_item_add_batch", {"items": batch_items(text), **dest, **USER})
    else:
        send("queue_item_add", {"item": make_item(kind, text), **dest, **USER})


@queue.command("upload", context_settings=FREE_ARGS)
@lock_key_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("where", nargs=-1, metavar="[front|back|POS|before UID|after UID]")
def queue_upload(file: Path, where: tuple[str, ...]) -> None:
    """Add the plans of a spreadsheet (.xlsx, .xls, .csv), all or none (default: at the back).

    Row 1 names the columns: plan name, args, then one keyword argument each; every further
    row is a plan, its cells Python literals ('det1', 10, [1, 2]). See docs/http.md.
    """
    from qserver.spreadsheet import MAX_FILE_BYTES, SpreadsheetError, explain_batch, read_plans

    dest = parse_dest(list(where))
    if file.stat().st_size > MAX_FILE_BYTES:
        raise BadParams(f"{file} is larger than the {MAX_FILE_BYTES} bytes a spreadsheet may be")
    try:
        plans = read_plans(file.read_bytes(), file.name)
    except SpreadsheetError as e:
        raise BadParams(str(e)) from None
    reply = explain_batch(
        ask("queue_item_add_batch", {"items": plans.items, **dest, **USER}), plans.rows
    )
    if reply.get("success") is False:
        raise RequestRefused(f"Request failed: {reply.get('msg', '')}")
    show(reply, current_settings().fmt)


def _update(kind: str, uid: str, text: str, replace: bool) -> None:
    item = {**make_item(kind, text), "item_uid": uid}
    send("queue_item_update", {"item": item, **USER, "replace": replace})


@queue.command("update", context_settings=CONTEXT)
@lock_key_option
@click.argument("kind", type=KIND)
@click.argument("uid")
@click.argument("text", metavar="JSON")
def queue_update(kind: str, uid: str, text: str) -> None:
    """Edit the item UID in place (it keeps its uid)."""
    _update(kind, uid, text, replace=False)


@queue.command("replace", context_settings=CONTEXT)
@lock_key_option
@click.argument("kind", type=KIND)
@click.argument("uid")
@click.argument("text", metavar="JSON")
def queue_replace(kind: str, uid: str, text: str) -> None:
    """Replace the item UID (the new item gets a new uid)."""
    _update(kind, uid, text, replace=True)


@queue.command("execute", context_settings=CONTEXT)
@lock_key_option
@click.argument("kind", type=KIND)
@click.argument("text", metavar="JSON")
def queue_execute(kind: str, text: str) -> None:
    """Run a plan or instruction now, bypassing the queue."""
    send("queue_item_execute", {"item": make_item(kind, text), **USER})


simple(queue, "get", "queue_get", "Print the queue and the running item.")
simple(queue, "clear", "queue_clear", "Remove every queued item.", locked=True)
simple(queue, "start", "queue_start", "Start executing the queue.", locked=True)


@queue.command("stop", context_settings=CONTEXT)
@lock_key_option
@click.argument("cancel", type=click.Choice(["cancel"]), required=False)
def queue_stop(cancel: str | None) -> None:
    """Stop the queue after the running plan, or cancel a pending stop."""
    send("queue_stop_cancel" if cancel else "queue_stop")


@queue.command("autostart", context_settings=CONTEXT)
@lock_key_option
@click.argument("state", type=click.Choice(["enable", "disable"]))
def queue_autostart(state: str) -> None:
    """Start the queue automatically whenever it can run."""
    send("queue_autostart", {"enable": state == "enable"})


@queue.group("mode", context_settings=CONTEXT)
def queue_mode() -> None:
    """Queue execution mode."""


@queue_mode.command("set", context_settings=CONTEXT)
@lock_key_option
@click.argument(
    "words", nargs=-1, required=True, metavar="loop|ignore_failures True|False | default"
)
def queue_mode_set(words: tuple[str, ...]) -> None:
    """Set loop / ignore_failures, or restore the default mode."""
    send("queue_mode_set", parse_mode(words))


@queue.group("item", context_settings=CONTEXT)
def queue_item() -> None:
    """Get, remove or move single items (or batches)."""


@queue_item.command("get", context_settings=FREE_ARGS)
@click.argument("where", default="back", metavar="[front|back|POS|UID]")
def item_get(where: str) -> None:
    """Print one item (default: the back of the queue)."""
    send("queue_item_get", pos_or_uid(where))


@queue_item.command("remove", context_settings=FREE_ARGS)
@lock_key_option
@click.argument("words", nargs=-1, metavar="[front|back|POS|UID] | batch UID...")
def item_remove(words: tuple[str, ...]) -> None:
    """Remove one item (default: the back), or a batch by uid."""
    if words[:1] == ("batch",):
        if len(words) < 2:
            raise BadParams("Batch remove takes one or more uids")
        send("queue_item_remove_batch", {"uids": list(words[1:])})
    elif len(words) > 1:
        raise BadParams("Remove takes one position or uid (or: batch UID...)")
    else:
        send("queue_item_remove", pos_or_uid(words[0] if words else "back"))


@queue_item.command("move", context_settings=FREE_ARGS)
@lock_key_option
@click.argument(
    "words", nargs=-1, required=True, metavar="SRC POS|before UID|after UID | batch UID... DEST"
)
def item_move(words: tuple[str, ...]) -> None:
    """Move one item, or a batch of items by uid."""
    if words[0] == "batch":
        send("queue_item_move_batch", parse_batch_move(words[1:]))
    else:
        send("queue_item_move", parse_move(words))


@queue_item.command("dry-run", context_settings=FREE_ARGS)
@click.argument("words", nargs=-1, required=True, metavar="UID | proposal UID | plan JSON")
def item_dry_run(words: tuple[str, ...]) -> None:
    """Simulate a plan, moving nothing: its points, the motors' ranges against their limits,
    the detectors and an estimated duration (a queued or the running item by uid, a
    proposal, or a plan given as JSON)."""
    params: dict[str, Any]
    if len(words) == 2 and words[0] == "proposal":
        params = {"proposal_uid": words[1]}
    elif len(words) == 2 and words[0] == "plan":
        params = {"item": make_item("plan", words[1])}
    elif len(words) == 1:
        params = {"uid": words[0]}
    else:
        raise BadParams("Dry run takes a uid, 'proposal UID' or 'plan JSON'")
    if current_settings().fmt != "table":
        send("item_dry_run", {**params, **USER})
        return
    from qserver.cli.dry_run_text import dry_run_text

    send_and_render("item_dry_run", {**params, **USER}, dry_run_text)
