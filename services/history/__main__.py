"""Entry point: `python -m services.history --nats-url ... --prefix ...`."""

from __future__ import annotations

import argparse
import logging

import nats
from nats.micro import add_service

import qserver
from qserver.protocol.subjects import Subjects
from qserver.service_base import (
    add_methods,
    run_loop,
    service_arguments,
    setup_logging,
    shutdown,
    wait_for_signal,
)
from services.history.service import HistoryService

logger = logging.getLogger("services.history")


async def main(args: argparse.Namespace) -> int:
    subjects = Subjects(args.prefix)
    nc = await nats.connect(
        args.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, name="qserver-history"
    )
    svc = HistoryService(nc, nc.jetstream(), subjects)
    await svc.load()
    micro = await add_service(
        nc, name="qserver-history", version=qserver.__version__, metadata={"prefix": args.prefix}
    )
    await add_methods(micro, subjects.api, svc.handlers())
    await nc.subscribe(subjects.history_info, cb=svc.on_history_info)
    await nc.subscribe(subjects.api_wildcard, cb=svc.on_any_api)
    await svc.publish_info()
    logger.info("history service ready on %s (prefix %s)", args.nats_url, args.prefix)
    await wait_for_signal(svc.stop_requested)
    await shutdown(micro.stop(), nc.drain())
    logger.info("history service stopped: %d items", len(svc.history.records))
    return 0


def cli() -> None:
    p = service_arguments("python -m services.history", __doc__)
    args = p.parse_args()
    setup_logging(args.log_level)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
