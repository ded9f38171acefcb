"""Entry point: `python -m services.worker --nats-url ... --prefix ... [startup options]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from pathlib import Path

import nats
from nats.micro import add_service

import qserver
import sim_profile
from qserver.config import switch
from qserver.connect import NatsAuth, connect_options, servers
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import StartupConfig
from services.runtime import doc_stream
from services.runtime.console import ServiceConsole
from services.runtime.doc_stream import Reconnects
from services.runtime.replies import reply_to_inboxes_only
from services.runtime.service_base import (
    run_loop,
    service_arguments,
    setup_logging,
    shutdown,
    wait_for_signal,
)
from services.runtime.waiting import wait_for_nats
from services.worker import kafka_export
from services.worker.messages import ORPHAN_TIMEOUT_S
from services.worker.service import LOST, WorkerConfig, WorkerService

logger = logging.getLogger("services.worker")


async def main(args: argparse.Namespace) -> int:
    subjects = Subjects(args.prefix)
    startup = StartupConfig(
        startup_dir=args.startup_dir,
        startup_module=args.startup_module,
        startup_script=args.startup_script,
    )
    if not (args.startup_dir or args.startup_module or args.startup_script):
        startup = StartupConfig(startup_dir=str(sim_profile.STARTUP_DIR))
    config = WorkerConfig(
        nats_url=args.nats_url,
        default_startup=startup,
        env_args=(
            "--log-level",
            args.log_level,
            "--device-max-depth",
            str(args.device_max_depth),
            "--orphan-timeout",
            str(args.env_orphan_timeout),
        ),
        ipython_dir=ipython_dir(args),
    )
    # The environment process, started by this one, connects with the same settings.
    os.environ.update(NatsAuth.from_args(args).environ(), QSERVER_LOG_FORMAT=args.log_format)
    await wait_for_nats(args.nats_url)
    reconnects = Reconnects()  # the Kafka export follows the stream again at once
    nc = await nats.connect(
        servers(args.nats_url),
        name="qserver-worker",
        no_echo=True,  # `worker.state` carries both requests and our own events
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        reconnected_cb=reconnects.notify,
        **connect_options(args),
    )
    reply_to_inboxes_only(nc)  # before any subscription (ADR 11)
    console = ServiceConsole(nc, subjects)  # its log records on the console (ADR 18)
    await console.start()
    svc = WorkerService(nc, subjects, config)
    export = make_export(nc, subjects, reconnects)
    exporting = asyncio.create_task(export.run()) if export else None
    svc.export = export
    await svc.start()
    micro = await add_service(
        nc, name="qserver-worker", version=qserver.__version__, metadata={"prefix": args.prefix}
    )
    await svc.add_endpoints(micro)
    logger.info("worker service ready on %s (prefix %s)", args.nats_url, args.prefix)
    await wait_for_signal(svc.stop_requested)
    if exporting is not None:
        exporting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await exporting
    await shutdown(svc.stop(), micro.stop(), console.stop(), nc.drain(), timeout=KILL_TIMEOUT_S)
    logger.info("worker service stopped")
    return LOST if svc.lost else 0


KILL_TIMEOUT_S = 6.0


def ipython_dir(args: argparse.Namespace) -> Path | None:
    """Kernel mode's directory (the connection files), or None without kernel mode."""
    if not args.use_ipython_kernel:
        return None
    if args.ipython_dir:
        return Path(args.ipython_dir).resolve()
    from jupyter_core.paths import jupyter_runtime_dir

    # Where `jupyter console --existing kernel-<id>.json` looks for a file given by name.
    return Path(jupyter_runtime_dir())


def _on_off(text: str) -> bool:
    try:
        return switch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def make_export(
    nc: nats.NATS, subjects: Subjects, reconnects: Reconnects | None = None
) -> kafka_export.KafkaExport | None:
    """The export of the document stream to Kafka, when Kafka is configured (ADR 10)."""
    try:
        settings = kafka_export.settings_from_environment()
    except ValueError as e:  # a bad option: say so, run without the export
        logger.error("Kafka export is off: %s", e)
        return None
    if settings is None or not doc_stream.enabled():
        logger.info("not exporting documents to Kafka (no QSERVER_KAFKA_BOOTSTRAP)")
        return None
    return kafka_export.KafkaExport(nc, subjects, settings, reconnects)


def cli() -> None:
    p = service_arguments("python -m services.worker", __doc__)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--startup-dir", help="default: the simulated beamline (sim_profile)")
    where.add_argument("--startup-module")
    where.add_argument("--startup-script")
    p.add_argument("--device-max-depth", type=int, default=5)
    p.add_argument(
        "--env-orphan-timeout",
        type=float,
        default=float(os.environ.get("QSERVER_ENV_ORPHAN_TIMEOUT") or ORPHAN_TIMEOUT_S),
        help="seconds an idle environment left without a worker service waits to be adopted "
        f"before it closes itself ($QSERVER_ENV_ORPHAN_TIMEOUT; {ORPHAN_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--use-ipython-kernel",
        nargs="?",
        const=True,
        default=_on_off(os.environ.get("QSERVER_USE_IPYTHON_KERNEL", "")),
        type=_on_off,
        metavar="ON|OFF",
        help="run the environment in an IPython kernel that `jupyter console --existing` "
        "attaches to ($QSERVER_USE_IPYTHON_KERNEL; OFF)",
    )
    p.add_argument(
        "--ipython-dir",
        default=os.environ.get("QSERVER_IPYTHON_DIR") or None,
        help="kernel mode: where the kernel's connection file (0600) and IPython's files go "
        "($QSERVER_IPYTHON_DIR; Jupyter's runtime directory)",
    )
    args = p.parse_args()
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
