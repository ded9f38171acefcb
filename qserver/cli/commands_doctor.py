"""`qserver doctor`: is everything there and talking? Plain words, non-zero exit if not."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from qserver.cli.errors import EXIT_ERROR, EXIT_OK
from qserver.cli.options import CONTEXT
from qserver.cli.runner import current_settings, nats_url

if TYPE_CHECKING:
    from qserver.doctor import Check
    from qserver.localstack import StackLookup


def stack_check(lookup: StackLookup) -> Check:
    """Which local stack the addresses come from, or everywhere one was looked for."""
    from qserver.doctor import Check

    if lookup.info is None:
        return Check("local stack", "skip", f"none found: looked at {lookup.explain()}")
    info = lookup.info
    return Check(
        "local stack",
        "ok",
        f"{lookup.data_dir} (pid {info.get('pid', '?')}, NATS {info.get('nats_url')}, prefix "
        f"'{info.get('prefix')}'): addresses and the NATS key from its stack.json",
    )


@click.command(context_settings=CONTEXT)
@click.option(
    "--kafka-bootstrap",
    help="Kafka bootstrap servers [env QSERVER_KAFKA_BOOTSTRAP; the local stack's].",
)
@click.option(
    "--kafka-topic",
    help="Document topic [env QSERVER_KAFKA_TOPIC, else from QSERVER_BEAMLINE; the stack's].",
)
@click.option(
    "--tiled-url", help="Tiled server of the catalog [env QSERVER_TILED_URL; the stack's]."
)
@click.option("--http-url", help="HTTP gateway, e.g. http://host:60610 [the local stack's].")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data dir of a local stack to read addresses from [$QSERVER_DATA_DIR; the default "
    "one; a stack on another data dir whose NATS is $QSERVER_NATS_URL].",
)
def doctor(
    kafka_bootstrap: str | None,
    kafka_topic: str | None,
    tiled_url: str | None,
    http_url: str | None,
    data_dir: Path | None,
) -> None:
    """Check NATS and JetStream, each service ($SRV.PING), the environment, Kafka and the
    catalog; print what is wrong in plain words. Exit code 0 if all is well, 4 if not."""
    from qserver.client import DEFAULT_NATS_URL
    from qserver.connect import NatsAuth
    from qserver.doctor import DoctorConfig, healthy, report, run_checks
    from qserver.documents import configured_topic
    from qserver.localstack import find_stack, is_stack_nats, stack_credentials
    from qserver.protocol.subjects import DEFAULT_PREFIX

    settings = current_settings()
    env = os.environ
    given_url = nats_url(settings.address) or env.get("QSERVER_NATS_URL")
    # As every client does (qserver.client), but also with the stack of --data-dir.
    lookup = find_stack(data_dir, given_url)
    stack = lookup.info or {}
    url = given_url or stack.get("nats_url") or DEFAULT_NATS_URL
    stack_prefix = stack.get("prefix") if stack and is_stack_nats(url, stack) else None
    prefix = settings.prefix or env.get("QSERVER_PREFIX") or stack_prefix or DEFAULT_PREFIX
    bootstrap = (
        kafka_bootstrap or env.get("QSERVER_KAFKA_BOOTSTRAP") or stack.get("kafka_bootstrap")
    )
    topic = kafka_topic or (
        configured_topic(env)
        if env.get("QSERVER_KAFKA_TOPIC") or env.get("QSERVER_BEAMLINE") or not stack
        else stack.get("kafka_topic")
    )
    cfg = DoctorConfig(
        nats_url=url,
        prefix=prefix,
        auth=stack_credentials(url, NatsAuth.from_env(None, **settings.nats_auth), stack),
        kafka_bootstrap=bootstrap,
        kafka_topic=topic,
        tiled_url=tiled_url or env.get("QSERVER_TILED_URL") or stack.get("tiled_url"),
        http_url=http_url or stack.get("http_url"),
        timeout=settings.timeout or 3.0,
    )
    checks = [stack_check(lookup), *asyncio.run(run_checks(cfg))]
    click.echo(report(checks))
    click.get_current_context().exit(EXIT_OK if healthy(checks) else EXIT_ERROR)
