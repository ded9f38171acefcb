"""The history service: plan history, and runs saved from the document stream into a Tiled
catalog (ADR 10).

Saving runs needs a Tiled server (`--tiled-url`); the API key is read from
`$QSERVER_TILED_API_KEY` (a flag would show it in `ps`). The runs are written by the
catalog writer, a child process this service starts and keeps running (ADR 32).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os

import nats
from nats.micro import add_service

import qserver
from qserver.connect import connect_options, servers
from qserver.jsutil import patiently
from qserver.protocol.subjects import Subjects
from services.history.catalog_writer import WriterProcess, writer_argv, writer_env
from services.history.console import ConsoleKeeper
from services.history.service import HistoryService
from services.history.tiled_catalog import DEFAULT_CATALOG, TiledCatalog, TiledSettings
from services.runtime import doc_stream
from services.runtime.console import ServiceConsole
from services.runtime.console_lines import logged
from services.runtime.doc_stream import Reconnects
from services.runtime.replies import reply_to_inboxes_only
from services.runtime.service_base import (
    add_methods,
    run_loop,
    service_arguments,
    setup_logging,
    shutdown,
    wait_for_signal,
)
from services.runtime.waiting import wait_for_nats

logger = logging.getLogger("services.history")


async def main(args: argparse.Namespace) -> int:
    subjects = Subjects(args.prefix)
    await wait_for_nats(args.nats_url)
    reconnects = Reconnects()  # the stream readers follow again at once when NATS is back
    nc = await nats.connect(
        servers(args.nats_url),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        reconnected_cb=reconnects.notify,
        name="qserver-history",
        **connect_options(args),
    )
    reply_to_inboxes_only(nc)  # before any subscription (ADR 11)
    service_console = ServiceConsole(nc, subjects)  # its log records on the console (ADR 18)
    await service_console.start()
    tiled = tiled_settings(args)
    svc = HistoryService(
        nc,
        nc.jetstream(),
        subjects,
        catalog=TiledCatalog(tiled) if tiled else None,
        reconnects=reconnects,
    )
    await patiently("loading the history", svc.load)
    console = ConsoleKeeper(nc, subjects, reconnects)
    await patiently("loading the console backlog", console.load)
    writer = make_writer(args, tiled)
    writing = asyncio.create_task(writer.run()) if writer else None
    micro = await add_service(
        nc, name="qserver-history", version=qserver.__version__, metadata={"prefix": args.prefix}
    )
    handlers = logged({**svc.handlers(), **console.handlers()}, service_console)
    await add_methods(micro, subjects.api, handlers, nc=nc)
    await nc.subscribe(subjects.history_info, cb=svc.on_history_info)
    await svc.publish_info()
    logger.info("history service ready on %s (prefix %s)", args.nats_url, args.prefix)
    await wait_for_signal(svc.stop_requested)
    if writing is not None:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
    await shutdown(micro.stop(), svc.close(), console.close(), service_console.stop(), nc.drain())
    logger.info("history service stopped: %d items", len(svc.history.records))
    return 0


def tiled_settings(args: argparse.Namespace) -> TiledSettings | None:
    if not args.tiled_url:
        return None
    return TiledSettings(
        url=args.tiled_url,
        api_key=os.environ.get("QSERVER_TILED_API_KEY") or None,
        catalog=args.tiled_catalog,
    )


def make_writer(args: argparse.Namespace, tiled: TiledSettings | None) -> WriterProcess | None:
    if tiled is None or not doc_stream.enabled():
        logger.info(
            "not saving runs to a catalog: %s",
            "no Tiled server (--tiled-url)" if tiled is None else "QSERVER_DOCS_STREAM is off",
        )
        return None
    return WriterProcess(writer_argv(args), writer_env(args))


def cli() -> None:
    p = service_arguments("python -m services.history", __doc__)
    env = os.environ
    p.add_argument(
        "--tiled-url",
        default=env.get("QSERVER_TILED_URL", ""),
        help="Tiled server to save runs to, e.g. http://127.0.0.1:8000; empty = off "
        "($QSERVER_TILED_URL; the API key comes from $QSERVER_TILED_API_KEY)",
    )
    p.add_argument(
        "--tiled-catalog",
        default=env.get("QSERVER_TILED_CATALOG") or DEFAULT_CATALOG,
        help=f"the container of runs on that server (default {DEFAULT_CATALOG!r})",
    )
    args = p.parse_args()
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
