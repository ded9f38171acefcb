"""Shared pieces of the command tree: context settings, the lock key option, simple commands."""

from __future__ import annotations

from typing import Any

import click

from qserver.cli.errors import BadParams
from qserver.cli.runner import Settings, current_settings, send
from qserver.connect import ENV_VARS, FLAG_HELP

CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
# For commands with free-form words: `-1` is a position, not an unknown option.
FREE_ARGS: dict[str, Any] = {**CONTEXT, "ignore_unknown_options": True}


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


def _store_nats_auth(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and param.name is not None:
        ctx.ensure_object(Settings).nats_auth[param.name] = value


def nats_auth_options(f: Any) -> Any:
    """`--nats-user`, `--nats-creds`, ... and TLS files, as the services take them."""
    for name, text in reversed(FLAG_HELP.items()):
        f = click.option(
            f"--nats-{name.replace('_', '-')}",
            name,
            expose_value=False,
            callback=_store_nats_auth,
            help=f"{text[0].upper()}{text[1:]} [env {ENV_VARS[name]}].",
        )(f)
    return f


def simple(group: click.Group, name: str, method: str, doc: str, locked: bool = False) -> None:
    """A command that sends `method` with no parameters."""
    cmd = click.Command(name, callback=lambda: send(method), help=doc, context_settings=CONTEXT)
    group.add_command(lock_key_option(cmd) if locked else cmd)


def required_key() -> str:
    key = current_settings().lock_key
    if key is None:
        raise BadParams("A lock key is required: use -k KEY")
    return key
