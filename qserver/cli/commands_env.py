"""Commands for the worker environment: plans and devices, permissions, run engine, history,
functions, scripts, tasks and the kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from qserver.cli.errors import BadParams
from qserver.cli.options import CONTEXT, lock_key_option, simple
from qserver.cli.output import format_lists
from qserver.cli.runner import (
    USER,
    current_settings,
    send,
    send_and_render,
    send_history_latest,
)
from qserver.cli.words import flags, make_item, parse_history_clear
from qserver.legacy import CLI_USER_GROUP

# ----- environment, plans and devices, permissions -----


@click.group(context_settings=CONTEXT)
def environment() -> None:
    """Open, close, destroy or update the worker environment."""


simple(environment, "open", "environment_open", "Open the environment.", locked=True)
simple(environment, "close", "environment_close", "Close the environment.", locked=True)
simple(environment, "destroy", "environment_destroy", "Kill the environment.", locked=True)


@environment.command("update", context_settings=CONTEXT)
@lock_key_option
@click.argument("background", type=click.Choice(["background"]), required=False)
def environment_update(background: str | None) -> None:
    """Rescan the environment's plans and devices."""
    send("environment_update", {"run_in_background": True} if background else {})


def _lists_command(name: str, suffix: str, params: dict[str, Any], doc: str) -> click.Command:
    @click.command(name, context_settings=CONTEXT, help=doc)
    @click.argument("what", type=click.Choice(["plans", "devices"]))
    @click.option("--names", is_flag=True, help="Only the names, one a line.")
    def cmd(what: str, names: bool) -> None:
        method = f"{what}_{suffix}"
        if names or current_settings().fmt == "table":
            send_and_render(method, params, lambda r: format_lists(r, method, names))
        else:
            send(method, params)

    return cmd


existing = _lists_command(
    "existing",
    "existing",
    {},
    "Plans or devices in the environment (--names or --format table: one a line).",
)
allowed = _lists_command(
    "allowed",
    "allowed",
    {"user_group": CLI_USER_GROUP},
    "Plans or devices the CLI's user group may use (--names or --format table: one a line).",
)


@click.group(context_settings=CONTEXT)
def permissions() -> None:
    """User group permissions."""


simple(permissions, "get", "permissions_get", "Print the permissions.")


@permissions.command("reload", context_settings=CONTEXT)
@lock_key_option
@click.argument("lists", type=click.Choice(["lists"]), required=False)
def permissions_reload(lists: str | None) -> None:
    """Reload permissions from disk (with 'lists': also the plan and device lists)."""
    send("permissions_reload", {"restore_plans_devices": True} if lists else {})


@permissions.command("set", context_settings=CONTEXT)
@lock_key_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def permissions_set(path: Path) -> None:
    """Upload permissions from a YAML file."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BadParams(f"Invalid YAML in {path}: {e}") from None
    send("permissions_set", {"user_group_permissions": data})


# ----- run engine, history, functions, scripts, tasks, kernel -----


@click.group("re", context_settings=CONTEXT)
def re_group() -> None:
    """Pause, resume, stop, abort or halt the running plan."""


@re_group.command("pause", context_settings=CONTEXT)
@lock_key_option
@click.argument("option", type=click.Choice(["deferred", "immediate"]), default="deferred")
def re_pause(option: str) -> None:
    """Pause the running plan (at the next checkpoint by default)."""
    send("re_pause", {"option": option})


for _verb in ("resume", "stop", "abort", "halt"):
    simple(re_group, _verb, f"re_{_verb}", f"{_verb.capitalize()} the paused plan.", locked=True)
simple(re_group, "metadata", "re_metadata", "Print the RunEngine metadata.")


@re_group.command("runs", context_settings=CONTEXT)
@click.argument("option", type=click.Choice(["active", "open", "closed"]), default="active")
def re_runs(option: str) -> None:
    """List the runs of the running plan."""
    send("re_runs", {"option": option})


@click.group(context_settings=CONTEXT)
def history() -> None:
    """Plan history."""


@history.command("get", context_settings=CONTEXT)
@click.option(
    "--limit",
    "-n",
    type=int,
    help="Only the latest N items (a negative N means the same).",
)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    help="Skip this many of the latest items first (with --oldest: of the oldest).",
)
@click.option(
    "--oldest",
    is_flag=True,
    help="Count --offset and --limit from the oldest item (the wire's history_get paging).",
)
def history_get(offset: int, limit: int | None, oldest: bool) -> None:
    """Print the history, oldest item first: all of it, or the latest --limit N items.

    \b
    qserver history get --limit 3              the 3 latest items
    qserver history get --limit 3 --offset 3   the 3 before those
    qserver history get --oldest --limit 3     the 3 oldest items
    """
    count = None if limit is None else abs(limit)
    if oldest:
        send("history_get", {"offset": offset} | ({} if count is None else {"limit": count}))
    elif count is None and offset == 0:
        send("history_get")
    else:
        send_history_latest(offset, count)


@history.command("clear", context_settings=CONTEXT)
@lock_key_option
@click.argument("words", nargs=-1, metavar="[SIZE|UID]")
def history_clear(words: tuple[str, ...]) -> None:
    """Clear the history, keep only the last SIZE items, or drop up to and including UID."""
    send("history_clear", parse_history_clear(words))


@history.command("runs", context_settings=CONTEXT)
@click.argument("item_uid")
def history_runs(item_uid: str) -> None:
    """Where the runs of a history item are: uids, scan ids, saved in the catalog, URLs."""
    send("history_runs", {"item_uid": item_uid})


@history.command("result", context_settings=CONTEXT)
@click.argument("item_uid")
def history_result(item_uid: str) -> None:
    """The whole result of a history item: msg and traceback as the plan reported them."""
    send("history_result_get", {"item_uid": item_uid})


@history.command("run", context_settings=CONTEXT)
@click.argument("run_uid")
def history_run_item(run_uid: str) -> None:
    """Which queue item made a run (full uid, or its first 5+ characters), and who sent it."""
    send("history_run_item", {"run_uid": run_uid})


@click.group(context_settings=CONTEXT)
def function() -> None:
    """Functions in the environment."""


@function.command("execute", context_settings=CONTEXT)
@lock_key_option
@click.argument("text", metavar="JSON")
@click.argument("background", type=click.Choice(["background"]), required=False)
def function_execute(text: str, background: str | None) -> None:
    """Run a function that the permissions allow."""
    params = {"item": make_item("function", text), **USER}
    send("function_execute", {**params, "run_in_background": True} if background else params)


@click.group(context_settings=CONTEXT)
def script() -> None:
    """Scripts run in the environment."""


@script.command("upload", context_settings=CONTEXT)
@lock_key_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("words", nargs=-1, metavar="[background] [update-re] [keep-lists]")
def script_upload(path: Path, words: tuple[str, ...]) -> None:
    """Run a Python script in the environment."""
    opts = flags(words, ("background", "update-re", "keep-lists"))
    send(
        "script_upload",
        {
            "script": path.read_text(),
            "run_in_background": "background" in opts,
            "update_re": "update-re" in opts,
            "update_lists": "keep-lists" not in opts,
        },
    )


@click.command(context_settings=CONTEXT)
@click.argument("what", type=click.Choice(["result", "status"]))
@click.argument("task_uid")
def task(what: str, task_uid: str) -> None:
    """Status or result of a background task."""
    send(f"task_{what}", {"task_uid": task_uid})


@click.group(context_settings=CONTEXT)
def kernel() -> None:
    """The environment's IPython kernel."""


@kernel.command("interrupt", context_settings=CONTEXT)
@lock_key_option
@click.argument("words", nargs=-1, metavar="[task] [plan]")
def kernel_interrupt(words: tuple[str, ...]) -> None:
    """Send Ctrl-C to the kernel."""
    opts = flags(words, ("task", "plan"))
    send("kernel_interrupt", {"interrupt_task": "task" in opts, "interrupt_plan": "plan" in opts})
