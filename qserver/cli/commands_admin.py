"""Commands for locks, the manager and the local stack."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from qserver.cli.errors import NoReply
from qserver.cli.options import CONTEXT, lock_key_option, required_key, simple
from qserver.cli.runner import current_settings, nats_url, run_manager_kill, send
from qserver.cli.words import parse_manager_stop
from qserver.legacy import CLI_USER

# ----- locks and the manager -----


@click.group(context_settings=CONTEXT)
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
                "lock_key": required_key(),
                **targets,
                "user": CLI_USER,
                **({"note": note} if note is not None else {}),
            },
        )


_lock_command("environment", {"environment": True}, "Lock the environment.")
_lock_command("queue", {"queue": True}, "Lock the queue.")
_lock_command("all", {"environment": True, "queue": True}, "Lock the environment and queue.")
simple(lock, "info", "lock_info", "Print the lock (with -k: also check the key).", locked=True)


@click.command(context_settings=CONTEXT)
@lock_key_option
def unlock() -> None:
    """Remove the lock (needs the key it was locked with, -k KEY)."""
    send("unlock", {"lock_key": required_key()})


@click.group(context_settings=CONTEXT)
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


@click.group(context_settings=CONTEXT)
def stack() -> None:
    """Run the whole queue server on this machine."""


@stack.command("up", context_settings=CONTEXT)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where state, NATS keys and logs live [$QSERVER_DATA_DIR, else a per-user directory].",
)
@click.option("--nats-port", type=int, default=4222, show_default=True)
@click.option("--http-port", type=int, default=60610, show_default=True)
@click.option("--nats-url", help="Use this NATS server instead of starting one.")
@click.option("--prefix", "stack_prefix", help="Subject prefix [the global --prefix].")
@click.option("--kafka-port", type=int, default=0, help="Port of the local Kafka broker [free].")
@click.option(
    "--kafka-max-mib",
    type=click.IntRange(min=0),
    default=1024,
    show_default=True,
    help="Restart the local Kafka broker empty when it holds more memory than this (it keeps "
    "every document it is given; runs stay in the document stream and the catalog). 0: no "
    "bound.",
)
@click.option("--no-kafka", is_flag=True, help="Do not run a Kafka broker nor publish documents.")
@click.option(
    "--no-catalog", is_flag=True, help="Do not serve the run catalog (Tiled) nor save runs to it."
)
@click.option("--tiled-port", type=int, default=0, help="Port of the catalog's Tiled server [free]")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    help="YAML configuration for every service (docs/configuration.md) [$QSERVER_CONFIG].",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="The HTTP gateway takes no API keys (for a closed machine; loopback only). NATS "
    "still refuses anonymous clients: its keys are in the data dir, readable by you only.",
)
@click.option(
    "--http-config",
    type=click.Path(exists=True, path_type=Path),
    help="bluesky-httpserver's YAML configuration: the gateway takes logins (authentication, "
    "api_access, resource_access) instead of the single-user key (docs/http.md).",
)
@click.option(
    "--use-ipython-kernel",
    "ipython_kernel",
    is_flag=False,
    flag_value="ON",
    default=None,
    metavar="[ON|OFF]",
    help="Run the environment in an IPython kernel that `jupyter console --existing` attaches "
    "to (connection file in the data dir) [the configuration's worker.use_ipython_kernel, "
    "else OFF].",
)
@click.option(
    "--no-zmq",
    is_flag=True,
    help="Do not run the 0MQ bridge (the reference's control protocol and console feed).",
)
@click.option("--zmq-port", type=int, default=60615, show_default=True, help="0MQ control port.")
@click.option(
    "--zmq-info-port", type=int, default=60625, show_default=True, help="0MQ console/info port."
)
def stack_up(
    data_dir: Path | None,
    nats_port: int,
    http_port: int,
    nats_url: str | None,
    stack_prefix: str | None,
    kafka_port: int,
    kafka_max_mib: int,
    no_kafka: bool,
    no_catalog: bool,
    tiled_port: int,
    config_file: str | None,
    no_auth: bool,
    http_config: Path | None,
    ipython_kernel: str | None,
    no_zmq: bool,
    zmq_port: int,
    zmq_info_port: int,
) -> None:
    """Start NATS, the services and the gateway; Ctrl-C stops them."""
    from qserver.protocol.subjects import DEFAULT_PREFIX
    from services.stack.embedded import exec_stack, use_config

    use_config(config_file)
    kernel = None
    if ipython_kernel is not None:
        from qserver.config import switch

        try:
            kernel = switch(ipython_kernel)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--use-ipython-kernel") from None

    # Not `default_prefix()`: that is the prefix of a stack already running.
    prefix = (
        stack_prefix
        or current_settings().prefix
        or os.environ.get("QSERVER_PREFIX")
        or DEFAULT_PREFIX
    )
    exec_stack(
        data_dir=data_dir,
        nats_port=nats_port,
        http_port=http_port,
        nats_url=nats_url,
        prefix=prefix,
        kafka=not no_kafka,
        kafka_port=kafka_port,
        kafka_max_mib=kafka_max_mib,
        http_auth=not no_auth,
        catalog=not no_catalog,
        tiled_port=tiled_port,
        http_config=http_config,
        ipython_kernel=kernel,
        zmq=not no_zmq,
        zmq_port=zmq_port,
        zmq_info_port=zmq_info_port,
    )


@stack.command("info", context_settings=CONTEXT)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The stack's data dir [$QSERVER_DATA_DIR; the default one; a stack on another data "
    "dir whose NATS is $QSERVER_NATS_URL or -a].",
)
def stack_info(data_dir: Path | None) -> None:
    """Print what a running stack reports about itself."""
    from qserver.localstack import find_stack

    url = nats_url(current_settings().address) or os.environ.get("QSERVER_NATS_URL")
    lookup = find_stack(data_dir, url)
    if lookup.info is None:
        raise NoReply(
            f"no running stack found: looked at {lookup.explain()}. Start one with "
            "`qserver stack up`"
        )
    click.echo(json.dumps(lookup.info, indent=2, default=str))
