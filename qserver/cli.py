"""The `qserver` command line: keyword commands, the v0.0.1 `-c` form, monitor and stack.

`import qserver.cli` must stay fast, so the NATS client is imported only when a request is
sent (a test checks this).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from qserver.legacy import (
    CLI_USER,
    CLI_USER_GROUP,
    MONITOR,
    LegacyError,
    legacy_request,
    parse_legacy_value,
    parse_pos,
    pos_or_uid,
)

if TYPE_CHECKING:
    from qserver.client import Client

EXIT_OK = 0
EXIT_BAD_PARAMS = 1
EXIT_REFUSED = 2
EXIT_NO_ANSWER = 3
EXIT_ERROR = 4

USER = {"user": CLI_USER, "user_group": CLI_USER_GROUP}

# Methods that accept `lock_key`; the key is added only to these, because requests with
# unknown parameters are refused.
# fmt: off
LOCK_KEY_METHODS = frozenset({
    "environment_open", "environment_close", "environment_destroy", "environment_update",
    "queue_item_add", "queue_item_add_batch", "queue_item_update", "queue_item_remove",
    "queue_item_remove_batch", "queue_item_move", "queue_item_move_batch",
    "queue_item_execute", "queue_clear", "queue_mode_set", "queue_start", "queue_stop",
    "queue_stop_cancel", "queue_autostart", "history_clear", "re_pause", "re_resume",
    "re_stop", "re_abort", "re_halt", "permissions_reload", "permissions_set",
    "function_execute", "script_upload", "kernel_interrupt", "lock", "lock_info", "unlock",
})
# fmt: on

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
# For commands with free-form words: `-1` is a position, not an unknown option.
FREE_ARGS: dict[str, Any] = {**CONTEXT, "ignore_unknown_options": True}


# ----- errors: each ends the command with its own exit code (mapped in `main`) -----


class BadParams(click.ClickException):
    """A parameter the CLI cannot turn into a request: bad JSON, position, keyword."""

    exit_code = EXIT_BAD_PARAMS


class CliFailure(Exception):
    exit_code = EXIT_ERROR


class RequestRefused(CliFailure):
    exit_code = EXIT_REFUSED


class NoReply(CliFailure):
    exit_code = EXIT_NO_ANSWER


# ----- settings and requests -----


@dataclass
class Settings:
    """The global options; `None` means the client's default (env var, then built-in)."""

    address: str | None = None
    prefix: str | None = None
    lock_key: str | None = None
    timeout: float | None = None
    fmt: str = "json"


def _settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def nats_url(address: str | None) -> str | None:
    """Accept v0.0.1-style `tcp://host:port` addresses as NATS URLs."""
    if address and address.startswith("tcp://"):
        return "nats://" + address.removeprefix("tcp://")
    return address


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Client]:
    """A connected client; a missing server or service becomes `NoReply` (exit 3)."""
    from qserver.client import Client, NoAnswer

    options = {"timeout": settings.timeout} if settings.timeout else {}
    try:
        client = await Client.connect(nats_url(settings.address), settings.prefix, **options)
    except NoAnswer as e:
        raise NoReply(str(e)) from None
    try:
        yield client
    except NoAnswer as e:
        raise NoReply(str(e)) from None
    finally:
        await client.close()


async def _request(settings: Settings, method: str, params: dict[str, Any]) -> dict[str, Any]:
    async with connected(settings) as client:
        return await client.request(method, params)


def with_lock_key(method: str, params: dict[str, Any], lock_key: str | None) -> dict[str, Any]:
    if lock_key is None or method not in LOCK_KEY_METHODS or "lock_key" in params:
        return params
    return {**params, "lock_key": lock_key}


def send(method: str, params: dict[str, Any] | None = None) -> None:
    """Send one request, print the reply; a refusal raises `RequestRefused`."""
    settings = _settings()
    params = with_lock_key(method, params or {}, settings.lock_key)
    show(asyncio.run(_request(settings, method, params)), settings.fmt)


def show(reply: dict[str, Any], fmt: str) -> None:
    # `status` replies carry no `success` key: only an explicit false is a refusal.
    if reply.get("success", True) is False:
        lines = [f"Request failed: {reply.get('msg', '')}"]
        lines += [
            f"  item {i}: {r.get('msg')}"
            for i, r in enumerate(reply.get("results", []))
            if isinstance(r, dict) and not r.get("success", True)
        ]
        raise RequestRefused("\n".join(lines))
    click.echo(format_table(reply) if fmt == "table" else json.dumps(reply, indent=2))


# ----- table output -----


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def item_rows(items: Sequence[dict[str, Any]]) -> list[list[str]]:
    with_status = any("result" in it for it in items)
    header = ["pos", "uid", "name", "args", "kwargs", "user"] + (["status"] if with_status else [])
    rows = [header]
    for pos, it in enumerate(items):
        row = [
            str(pos),
            str(it.get("item_uid", "")),
            str(it.get("name", "")),
            _compact(it.get("args", [])),
            _compact(it.get("kwargs", {})),
            str(it.get("user", "")),
        ]
        if with_status:
            row.append(str((it.get("result") or {}).get("exit_status", "")))
        rows.append(row)
    return rows


def format_table(reply: dict[str, Any]) -> str:
    """Items as an aligned table; every other key as a `key: value` line."""
    lines = []
    items = reply.get("items")
    if items is None and isinstance(reply.get("item"), dict):
        items = [reply["item"]]
    if isinstance(items, list) and all(isinstance(it, dict) for it in items):
        rows = item_rows(items)
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
    lines += [f"{k}: {_compact(v)}" for k, v in reply.items() if k not in ("items", "item")]
    return "\n".join(lines)


# ----- parsing words into request parameters (pure; unit tested) -----


def load_json(text: str, what: str = "JSON") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadParams(f"Invalid {what} {text!r}: {e.msg} at position {e.pos}") from None


def make_item(kind: str, text: str) -> dict[str, Any]:
    """An item of type `kind` from JSON; `queue-stop` is short for the only instruction."""
    if kind == "instruction" and text in ("queue-stop", "queue_stop"):
        return {"item_type": "instruction", "name": "queue_stop"}
    obj = load_json(text, f"{kind} JSON")
    if not isinstance(obj, dict):
        raise BadParams(f"The {kind} must be a JSON object, got {text!r}")
    return {**obj, "item_type": kind}


def batch_items(text: str) -> list[dict[str, Any]]:
    objs = load_json(text, "batch JSON")
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise BadParams(f"A batch must be a JSON list of objects, got {text!r}")
    return [{"item_type": "plan", **o} for o in objs]


def _relative(words: Sequence[str]) -> dict[str, Any] | None:
    """`before <uid>` or `after <uid>`, else None."""
    if len(words) == 2 and words[0] in ("before", "after"):
        return {f"{words[0]}_uid": words[1]}
    return None


def parse_dest(words: Sequence[str], pos_key: str = "pos") -> dict[str, Any]:
    """Where to put items: `front|back|<pos>|before <uid>|after <uid>`; default back."""
    if not words:
        return {pos_key: "back"}
    if (rel := _relative(words)) is not None:
        return rel
    if len(words) == 1:
        return {pos_key: parse_pos(words[0])}
    raise BadParams(
        f"Invalid destination {' '.join(words)!r}: "
        "use front, back, <pos>, before <uid> or after <uid>"
    )


def parse_move(words: Sequence[str]) -> dict[str, Any]:
    """`<src: pos|uid|front|back> <dest: pos|front|back> | before <uid> | after <uid>`."""
    if len(words) not in (2, 3):
        raise BadParams("Move takes <src> then <pos>, before <uid> or after <uid>")
    return {**pos_or_uid(words[0]), **parse_dest(words[1:], "pos_dest")}


def parse_batch_move(words: Sequence[str]) -> dict[str, Any]:
    """`<uid>... front|back|before <uid>|after <uid>`."""
    if len(words) >= 3 and (rel := _relative(words[-2:])) is not None:
        uids, dest = words[:-2], rel
    elif len(words) >= 2 and words[-1] in ("front", "back"):
        uids, dest = words[:-1], {"pos_dest": words[-1]}
    else:
        raise BadParams("Batch move takes <uid>... then front, back, before <uid> or after <uid>")
    return {"uids": list(uids), **dest}


def parse_bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "1", "on", "yes"):
        return True
    if value in ("false", "0", "off", "no"):
        return False
    raise BadParams(f"Invalid boolean {text!r}: use True or False")


def parse_mode(words: Sequence[str]) -> dict[str, Any]:
    """`default`, or pairs such as `loop True ignore_failures False`."""
    if list(words) == ["default"]:
        return {"mode": "default"}
    if not words or len(words) % 2:
        raise BadParams("Mode takes 'default' or pairs: loop|ignore_failures True|False")
    mode = {}
    for name, value in zip(words[::2], words[1::2], strict=True):
        key = name.replace("-", "_")
        if key not in ("loop", "ignore_failures"):
            raise BadParams(f"Unknown queue mode {name!r}: use loop or ignore_failures")
        mode[key] = parse_bool(value)
    return {"mode": mode}


def parse_manager_stop(words: Sequence[str]) -> dict[str, Any]:
    """`[safe on|safe off]`, also written `safe_on`/`safe_off`."""
    option = "_".join(words).replace("-", "_")
    if not option:
        return {}
    if option not in ("safe_on", "safe_off"):
        raise BadParams(f"Invalid option {' '.join(words)!r}: use 'safe on' or 'safe off'")
    return {"option": option}


def parse_history_clear(words: Sequence[str]) -> dict[str, Any]:
    if not words:
        return {}
    if len(words) > 1:
        raise BadParams("History clear takes at most one size or item uid")
    try:
        return {"size": int(words[0])}
    except ValueError:
        return {"item_uid": words[0]}


def flags(words: Sequence[str], allowed: Sequence[str]) -> set[str]:
    unknown = set(words) - set(allowed)
    if unknown:
        raise BadParams(f"Unknown keyword(s) {sorted(unknown)}: use {', '.join(allowed)}")
    return set(words)


# ----- the v0.0.1 form: `qserver -c <command> [-p <param>]...` -----

# fmt: off
_VALUE_OPTIONS = frozenset({
    "-a", "--address", "--prefix", "-k", "--lock-key", "--timeout", "--format",
    "-c", "--command", "-p", "--param",
})
# fmt: on
_NUMBER = re.compile(r"^-\d+(\.\d*)?$")


def normalize_legacy_argv(args: Sequence[str]) -> list[str]:
    """In the `-c` form, turn every bare value into `-p value`.

    v0.0.1 let one `-p` take several values (`-p front '{...}'`); click options take one.
    Negative numbers are values, not options. Without `-c` before the first command word,
    the arguments are returned unchanged.
    """
    out: list[str] = []
    legacy = False
    i = 0
    while i < len(args):
        tok = args[i]
        if tok in _VALUE_OPTIONS:
            legacy = legacy or tok in ("-c", "--command")
            out += args[i : i + 2]
            i += 2
            continue
        legacy = legacy or tok.startswith("--command=")
        if tok.startswith("-") and not _NUMBER.match(tok):
            out.append(tok)
        elif not legacy:
            return list(args)  # a command word: the keyword form
        else:
            out += ["-p", tok]
        i += 1
    return out


class QServerGroup(click.Group):
    """The top group, which also accepts the v0.0.1 `-c` form."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_legacy_argv(args))


def run_legacy(command: str, values: Sequence[str]) -> None:
    if command == MONITOR:
        run_monitor(once=False)
        return
    method, params = legacy_request(command, [parse_legacy_value(v) for v in values])
    if method == "manager_kill":
        run_manager_kill()
    else:
        send(method, params)


# ----- monitor and manager kill -----

WATCHED = ("manager_state", "items_in_queue", "items_in_history", "running_item_uid", "lock")


def monitor_line(status: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_compact(status.get(k))}" for k in WATCHED)
    return f"{status.get('time', '')}  {fields}"


async def _monitor(settings: Settings, once: bool) -> None:
    async with connected(settings) as client:
        status = await client.request("status")
        click.echo(monitor_line(status))
        if once:
            return
        # Status events also come once a second without a change: print changes only.
        last = {k: v for k, v in status.items() if k != "time"}
        async for event in client.status_events():
            current = {k: v for k, v in event.items() if k != "time"}
            if current != last:
                click.echo(monitor_line(event))
                last = current


def run_monitor(once: bool) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_monitor(_settings(), once))


async def _manager_kill(settings: Settings) -> dict[str, Any] | None:
    from qserver.client import NoAnswer

    async with connected(settings) as client:
        await client.request("ping")  # nobody there to kill is a communication error
        try:
            return await client.request("manager_kill", {}, timeout=1.0)
        except NoAnswer:
            return None  # expected: the manager dies without replying


def run_manager_kill() -> None:
    settings = _settings()
    reply = asyncio.run(_manager_kill(settings))
    if reply is None:
        click.echo("manager_kill was sent (the manager does not reply to it)")
    else:
        show(reply, settings.fmt)


# ----- the command tree -----

EPILOG = """\b
Examples:
  qserver status
  qserver queue add plan '{"name":"count","args":[["det1","det2"]]}'
  qserver queue add plan front '{"name":"count","args":[["det1"]]}'
  qserver queue item move 2 front
  qserver lock queue "maintenance" -k KEY
  qserver -c queue_plan_add -p -1 '{"name":"count","args":[["det1"]]}'   (v0.0.1 form)
"""


def _store_lock_key(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Settings).lock_key = value


lock_key_option = click.option(
    "-k",
    "--lock-key",
    expose_value=False,
    callback=_store_lock_key,
    help="Lock key for a locked environment or queue.",
)


def simple(group: click.Group, name: str, method: str, doc: str, locked: bool = False) -> None:
    """A command that sends `method` with no parameters."""
    cmd = click.Command(name, callback=lambda: send(method), help=doc, context_settings=CONTEXT)
    group.add_command(lock_key_option(cmd) if locked else cmd)


@click.group(cls=QServerGroup, context_settings=CONTEXT, invoke_without_command=True, epilog=EPILOG)
@click.option("-a", "--address", help="NATS URL [env QSERVER_NATS_URL; nats://localhost:4222].")
@click.option("--prefix", help="Subject prefix [env QSERVER_PREFIX; qs.default].")
@lock_key_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for a reply [10].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "table"]),
    default="json",
    help="Print replies as JSON or as a table.",
)
@click.option("-c", "--command", help="v0.0.1 form: the request to send, e.g. queue_plan_add.")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    help="v0.0.1 form: a parameter of -c (Python literal or JSON).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    address: str | None,
    prefix: str | None,
    timeout: float | None,
    fmt: str,
    command: str | None,
    params: tuple[str, ...],
) -> None:
    """Control a Bluesky queue server over NATS."""
    settings = ctx.ensure_object(Settings)
    settings.address, settings.prefix = address, prefix
    settings.timeout, settings.fmt = timeout, fmt
    if prefix is not None:
        from qserver.protocol.subjects import check_prefix  # no heavy imports there

        try:
            check_prefix(prefix)
        except ValueError as e:
            raise BadParams(str(e)) from None
    if command is not None:
        run_legacy(command, params)
    elif params:
        raise BadParams("-p is used with -c <command>")
    elif ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


simple(cli, "ping", "ping", "Ping the manager (replies with its status).")
simple(cli, "status", "status", "Print the manager status.")
simple(cli, "config", "config_get", "Print the manager configuration.")


@cli.command(context_settings=CONTEXT)
@click.option("--once", is_flag=True, help="Print the current status and exit.")
def monitor(once: bool) -> None:
    """Print a line whenever the status changes, until Ctrl-C."""
    run_monitor(once)


# ----- queue -----


@cli.group(context_settings=CONTEXT)
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


# ----- environment, plans and devices, permissions -----


@cli.group(context_settings=CONTEXT)
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


def _lists_command(name: str, suffix: str, params: dict[str, Any], doc: str) -> None:
    @cli.command(name, context_settings=CONTEXT, help=doc)
    @click.argument("what", type=click.Choice(["plans", "devices"]))
    def cmd(what: str) -> None:
        send(f"{what}_{suffix}", params)


_lists_command("existing", "existing", {}, "Plans or devices in the environment.")
_lists_command(
    "allowed",
    "allowed",
    {"user_group": CLI_USER_GROUP},
    "Plans or devices the CLI's user group may use.",
)


@cli.group(context_settings=CONTEXT)
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


@cli.group("re", context_settings=CONTEXT)
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


@cli.group(context_settings=CONTEXT)
def history() -> None:
    """Plan history."""


@history.command("get", context_settings=CONTEXT)
@click.option("--offset", type=click.IntRange(min=0), help="Skip this many items.")
@click.option("--limit", type=click.IntRange(min=0), help="Return at most this many items.")
def history_get(offset: int | None, limit: int | None) -> None:
    """Print the history (all of it unless --limit)."""
    params = {"offset": offset, "limit": limit}
    send("history_get", {k: v for k, v in params.items() if v is not None})


@history.command("clear", context_settings=CONTEXT)
@lock_key_option
@click.argument("words", nargs=-1, metavar="[SIZE|UID]")
def history_clear(words: tuple[str, ...]) -> None:
    """Clear the history, keep only the last SIZE items, or drop up to and including UID."""
    send("history_clear", parse_history_clear(words))


@cli.group(context_settings=CONTEXT)
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


@cli.group(context_settings=CONTEXT)
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


@cli.command(context_settings=CONTEXT)
@click.argument("what", type=click.Choice(["result", "status"]))
@click.argument("task_uid")
def task(what: str, task_uid: str) -> None:
    """Status or result of a background task."""
    send(f"task_{what}", {"task_uid": task_uid})


@cli.group(context_settings=CONTEXT)
def kernel() -> None:
    """The environment's IPython kernel."""


@kernel.command("interrupt", context_settings=CONTEXT)
@lock_key_option
@click.argument("words", nargs=-1, metavar="[task] [plan]")
def kernel_interrupt(words: tuple[str, ...]) -> None:
    """Send Ctrl-C to the kernel."""
    opts = flags(words, ("task", "plan"))
    send("kernel_interrupt", {"interrupt_task": "task" in opts, "interrupt_plan": "plan" in opts})


# ----- locks and the manager -----


@cli.group(context_settings=CONTEXT)
def lock() -> None:
    """Lock the environment and/or the queue with a key (-k KEY)."""


def _lock_command(name: str, targets: dict[str, bool], doc: str) -> None:
    @lock.command(name, context_settings=CONTEXT, help=doc)
    @lock_key_option
    @click.argument("note", required=False)
    def cmd(note: str | None) -> None:
        send(
            "lock",
            {
                "lock_key": _required_key(),
                **targets,
                "user": CLI_USER,
                **({"note": note} if note is not None else {}),
            },
        )


_lock_command("environment", {"environment": True}, "Lock the environment.")
_lock_command("queue", {"queue": True}, "Lock the queue.")
_lock_command("all", {"environment": True, "queue": True}, "Lock the environment and queue.")
simple(lock, "info", "lock_info", "Print the lock (with -k: also check the key).", locked=True)


def _required_key() -> str:
    key = _settings().lock_key
    if key is None:
        raise BadParams("A lock key is required: use -k KEY")
    return key


@cli.command(context_settings=CONTEXT)
@lock_key_option
def unlock() -> None:
    """Remove the lock (needs the key it was locked with, -k KEY)."""
    send("unlock", {"lock_key": _required_key()})


@cli.group(context_settings=CONTEXT)
def manager() -> None:
    """Stop the manager, or kill it (test hook)."""


@manager.command("stop", context_settings=CONTEXT)
@click.argument("words", nargs=-1, metavar="[safe on|safe off]")
def manager_stop(words: tuple[str, ...]) -> None:
    """Exit the manager; 'safe off' stops it even while a plan runs."""
    send("manager_stop", parse_manager_stop(words))


@manager.command("kill", context_settings=CONTEXT)
@click.argument("test", type=click.Choice(["test"]))
def manager_kill(test: str) -> None:
    """Kill the manager without a reply (tests its restart)."""
    run_manager_kill()


# ----- stack -----


@cli.group(context_settings=CONTEXT)
def stack() -> None:
    """Run the whole queue server on this machine."""


@stack.command("up", context_settings=CONTEXT)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where state and logs live [a per-user data directory].",
)
@click.option("--nats-port", type=int, default=4222, show_default=True)
@click.option("--http-port", type=int, default=60610, show_default=True)
@click.option("--nats-url", help="Use this NATS server instead of starting one.")
@click.option("--prefix", "stack_prefix", help="Subject prefix [the global --prefix].")
def stack_up(
    data_dir: Path | None,
    nats_port: int,
    http_port: int,
    nats_url: str | None,
    stack_prefix: str | None,
) -> None:
    """Start NATS, the services and the gateway; Ctrl-C stops them."""
    from qserver.client import default_prefix
    from qserver.stack import run_stack

    prefix = stack_prefix or _settings().prefix or default_prefix()
    code = run_stack(
        data_dir=data_dir,
        nats_port=nats_port,
        http_port=http_port,
        nats_url=nats_url,
        prefix=prefix,
    )
    click.get_current_context().exit(code)


@stack.command("info", context_settings=CONTEXT)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
def stack_info(data_dir: Path | None) -> None:
    """Print what a running stack reports about itself."""
    from qserver.stack import StackNotRunning, read_stack_info

    try:
        info = read_stack_info(data_dir)
    except StackNotRunning as e:
        raise NoReply(e.msg) from None
    click.echo(json.dumps(info, indent=2, default=str))


# ----- entry point: the one place where failures become exit codes -----


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    try:
        rv = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="qserver",
            standalone_mode=False,
        )
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help() if e.ctx else str(e))  # a bare group: help, not an error
        return EXIT_OK
    except click.ClickException as e:
        e.show()
        return EXIT_BAD_PARAMS
    except click.exceptions.Abort:
        click.echo("Aborted", err=True)
        return EXIT_ERROR
    except LegacyError as e:
        click.echo(f"Error: {e}", err=True)
        return EXIT_BAD_PARAMS
    except CliFailure as e:
        click.echo(str(e), err=True)
        return e.exit_code
    except Exception as e:
        click.echo(f"Error: {e!r}", err=True)
        return EXIT_ERROR
    return rv if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":
    main()
