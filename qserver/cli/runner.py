"""Settings, sending requests, the v0.0.1 `-c` runner, monitor, manager kill, exit codes.

The NATS client is imported only when a request is sent, so `import qserver.cli` stays
fast (a test checks this).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from qserver.cli.errors import (
    EXIT_BAD_PARAMS,
    EXIT_ERROR,
    EXIT_OK,
    BadParams,
    CliFailure,
    NoReply,
    RequestRefused,
)
from qserver.cli.output import check, monitor_fields, monitor_line, progress_bar, show
from qserver.legacy import (
    CLI_USER,
    CLI_USER_GROUP,
    MONITOR,
    LegacyError,
    legacy_request,
    parse_legacy_value,
)

if TYPE_CHECKING:
    from qserver.client import Client

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
    "proposal_add", "proposal_approve",
})
# fmt: on


# ----- settings and requests -----


@dataclass
class Settings:
    """The global options; `None` means the client's default (env var, then built-in)."""

    address: str | None = None
    prefix: str | None = None
    lock_key: str | None = None
    timeout: float | None = None
    fmt: str = "json"
    nats_auth: dict[str, str] = field(default_factory=dict)  # --nats-* flags over QSERVER_NATS_*


def current_settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def nats_url(address: str | None) -> str | None:
    """Accept v0.0.1-style `tcp://host:port` addresses as NATS URLs."""
    if address and address.startswith("tcp://"):
        return "nats://" + address.removeprefix("tcp://")
    return address


@contextlib.asynccontextmanager
async def connected(settings: Settings) -> AsyncIterator[Client]:
    """A connected client; a missing server or service becomes `NoReply` (exit 3), a refusal
    by NATS (credentials, permissions) `RequestRefused` (exit 2)."""
    from qserver.client import AccessDenied, Client, NoAnswer
    from qserver.connect import NatsAuth, NatsConfigError

    options: dict[str, Any] = {"timeout": settings.timeout} if settings.timeout else {}
    try:
        auth = NatsAuth.from_env(None, **settings.nats_auth)
        client = await Client.connect(
            nats_url(settings.address), settings.prefix, auth=auth, **options
        )
    except NatsConfigError as e:
        raise BadParams(str(e)) from None
    except NoAnswer as e:
        raise NoReply(str(e)) from None
    except AccessDenied as e:
        raise RequestRefused(str(e)) from None
    try:
        yield client
    except NoAnswer as e:
        raise NoReply(str(e)) from None
    except AccessDenied as e:
        raise RequestRefused(str(e)) from None
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
    settings = current_settings()
    params = with_lock_key(method, params or {}, settings.lock_key)
    show(asyncio.run(_request(settings, method, params)), settings.fmt)


def ask(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one request and return its reply, refused or not (the caller prints it)."""
    settings = current_settings()
    return asyncio.run(
        _request(settings, method, with_lock_key(method, params or {}, settings.lock_key))
    )


def latest_window(total: int, skip: int, count: int | None) -> tuple[int, int]:
    """The wire's (offset, limit) for the latest `count` items after skipping the `skip` latest."""
    end = max(0, total - skip)
    start = 0 if count is None else max(0, end - count)
    return start, end - start


async def _history_latest(settings: Settings, skip: int, count: int | None) -> dict[str, Any]:
    async with connected(settings) as client:
        # The wire pages from the oldest item (the reference's semantics); the status tells
        # the length. If the history changed in between (its uid differs), ask again; after
        # three tries, take the whole history and cut it here.
        for _ in range(3):
            status = await client.request("status")
            offset, limit = latest_window(int(status["items_in_history"]), skip, count)
            reply = await client.request("history_get", {"offset": offset, "limit": limit})
            if reply.get("plan_history_uid") == status.get("plan_history_uid"):
                return reply
        reply = await client.request("history_get")
        items = reply.get("items", [])
        offset, limit = latest_window(len(items), skip, count)
        return {**reply, "items": items[offset : offset + limit]}


def send_history_latest(skip: int, count: int | None) -> None:
    """Print the latest `count` history items (all if None) after skipping the `skip` latest."""
    settings = current_settings()
    show(asyncio.run(_history_latest(settings, skip, count)), settings.fmt)


def send_and_render(
    method: str, params: dict[str, Any], render: Callable[[dict[str, Any]], str]
) -> None:
    """Send one request and print `render(reply)`; a refusal raises `RequestRefused`."""
    reply = asyncio.run(_request(current_settings(), method, params))
    check(reply)
    click.echo(render(reply))


def run_legacy(command: str, values: Sequence[str]) -> None:
    """Run the v0.0.1 form `qserver -c <command> [-p <param>]...`."""
    if command == MONITOR:
        run_monitor(once=False)
        return
    method, params = legacy_request(command, [parse_legacy_value(v) for v in values])
    if method == "manager_kill":
        run_manager_kill()
    else:
        send(method, params)


# ----- monitor and manager kill -----


async def _monitor(settings: Settings, once: bool) -> None:
    async with connected(settings) as client:
        status = await client.request("status")
        last = monitor_fields(status)
        click.echo(monitor_line(status))
        if once:
            return
        # Status events also come once a second without a change, and change in keys the
        # line does not show: print the line when it changes.
        async for event in client.status_events():
            fields = monitor_fields(event)
            if fields != last:
                click.echo(monitor_line(event))
                last = fields


def run_monitor(once: bool) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_monitor(current_settings(), once))


async def _progress_monitor(settings: Settings, once: bool) -> None:
    """A progress bar of the running plan's run (ADR 25): redrawn in place on a terminal, a
    line per event otherwise; a line of its own for each run that ends."""
    from qserver.feeds import open_run_progress

    tty = sys.stdout.isatty()
    async with connected(settings) as client:
        if once:
            ev = await open_run_progress(client)
            click.echo(progress_bar(ev) if ev and not ev.get("done") else "no run in progress")
            return
        async for ev in client.progress_feed():
            line = progress_bar(ev)
            if tty and not ev.get("done"):
                sys.stdout.write("\r\x1b[K" + line)
            else:
                sys.stdout.write(("\r\x1b[K" if tty else "") + line + "\n")
            sys.stdout.flush()


def run_progress_monitor(once: bool) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_progress_monitor(current_settings(), once))


async def _console_monitor(settings: Settings, once: bool, backlog: int) -> None:
    """As the reference's `qserver-console-monitor`: each message written as it came (its
    carriage returns and cursor moves redraw progress bars in a terminal), after the last
    `backlog` ones the server kept (ADR 18)."""
    async with connected(settings) as client:
        if once:
            params = {"last_msg_uid": "ALL"}
            kept = (await client.request("console_output_update", params))["console_output_msgs"]
            for m in kept[-backlog:] if backlog else []:
                _write(m)
            return
        async for m in client.console_feed(backlog):
            _write(m)


def _write(m: dict[str, Any]) -> None:
    # Not click.echo: it strips escape sequences when the output is not a terminal.
    sys.stdout.write(str(m.get("msg", "")))
    sys.stdout.flush()


def run_console_monitor(once: bool, backlog: int = 200) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_console_monitor(current_settings(), once, backlog))


async def _manager_kill(settings: Settings) -> dict[str, Any] | None:
    from qserver.client import NoAnswer

    async with connected(settings) as client:
        await client.request("ping")  # nobody there to kill is a communication error
        try:
            return await client.request("manager_kill", {}, timeout=1.0)
        except NoAnswer:
            return None  # expected: the manager dies without replying


def run_manager_kill() -> None:
    settings = current_settings()
    reply = asyncio.run(_manager_kill(settings))
    if reply is None:
        click.echo("manager_kill was sent (the manager does not reply to it)")
    else:
        show(reply, settings.fmt)


# ----- the one place where failures become exit codes -----


def run_command(command: click.Command, argv: Sequence[str] | None = None) -> int:
    """Run the CLI `command` on `argv` and return its exit code."""
    try:
        rv = command.main(
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
