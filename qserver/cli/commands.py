"""The top `qserver` group: global options, the v0.0.1 `-c` form and the top-level commands."""

from __future__ import annotations

from pathlib import Path

import click

from qserver.cli import (
    commands_admin,
    commands_doctor,
    commands_env,
    commands_login,
    commands_proposal,
    commands_queue,
)
from qserver.cli.errors import BadParams
from qserver.cli.options import CONTEXT, lock_key_option, nats_auth_options, simple
from qserver.cli.runner import (
    Settings,
    run_console_monitor,
    run_legacy,
    run_monitor,
    run_progress_monitor,
)
from qserver.cli.words import normalize_legacy_argv

EPILOG = """\b
Examples:
  qserver status
  qserver queue add plan '{"name":"count","args":[["det1","det2"]]}'
  qserver queue add plan front '{"name":"count","args":[["det1"]]}'
  qserver queue item move 2 front
  qserver lock queue "maintenance" -k KEY
  qserver -c queue_plan_add -p -1 '{"name":"count","args":[["det1"]]}'   (v0.0.1 form)
"""


def version_text() -> str:
    """Which `qserver` answers: ours, from which package (the reference's has the same name)."""
    import qserver

    where = Path(qserver.__file__).resolve().parent
    return (
        f"qserver {qserver.__version__} (NATS queue server client, package qserver at {where}; "
        "also installed as qserver-nats and python -m qserver)"
    )


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


class QServerGroup(click.Group):
    """The top group, which also accepts the v0.0.1 `-c` form."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, normalize_legacy_argv(args))


@click.group(cls=QServerGroup, context_settings=CONTEXT, invoke_without_command=True, epilog=EPILOG)
@click.option(
    "-a",
    "--address",
    help="NATS URL [env QSERVER_NATS_URL; the local stack's; nats://localhost:4222].",
)
@click.option(
    "--prefix", help="Subject prefix [env QSERVER_PREFIX; the local stack's; qs.default]."
)
@nats_auth_options
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
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print which qserver this is (version, package path) and exit.",
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
@click.argument("what", type=click.Choice(["status", "console", "progress"]), default="status")
@click.option(
    "--once",
    is_flag=True,
    help="Print the current status (or the console's recent output, or the open run's "
    "progress) and exit.",
)
@click.option(
    "--backlog",
    type=click.IntRange(0, 2000),
    default=200,
    show_default=True,
    help="Console: how many messages printed before the monitor started come first "
    "(0: only new ones).",
)
def monitor(what: str, once: bool, backlog: int) -> None:
    """Watch the server until Ctrl-C: a line per status change, the console, or progress.

    \b
    qserver monitor            status changes, as they are pushed
    qserver monitor console    what the server prints: the recent output, then live
    qserver monitor progress   a progress bar of the running plan (point n of N, ETA,
                               motor positions), then of each next run
    """
    if what == "console":
        run_console_monitor(once, backlog)
    elif what == "progress":
        run_progress_monitor(once)
    else:
        run_monitor(once)


for _command in (
    commands_queue.queue,
    commands_proposal.proposal,
    commands_env.environment,
    commands_env.existing,
    commands_env.allowed,
    commands_env.permissions,
    commands_env.re_group,
    commands_env.history,
    commands_env.function,
    commands_env.script,
    commands_env.task,
    commands_env.kernel,
    commands_admin.lock,
    commands_admin.unlock,
    commands_admin.manager,
    commands_admin.stack,
    commands_doctor.doctor,
    commands_login.login,
    commands_login.whoami,
    commands_login.logout,
):
    cli.add_command(_command)
