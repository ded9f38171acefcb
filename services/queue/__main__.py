"""Entry point: `python -m services.queue --nats-url ... --prefix ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

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
from services.queue.service import QueueService

logger = logging.getLogger("services.queue")
SIM_PROFILE = Path(__file__).resolve().parents[2] / "sim_profile"


async def main(args: argparse.Namespace) -> int:
    subjects = Subjects(args.prefix)
    nc = await nats.connect(
        args.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, name="qserver-queue"
    )
    js = nc.jetstream()
    svc = QueueService(
        nc,
        js,
        subjects,
        emergency_lock_key=os.environ.get("QSERVER_EMERGENCY_LOCK_KEY_FOR_SERVER") or None,
        snapshot_every=args.snapshot_every,
        lists_file=Path(args.lists_file) if args.lists_file else None,
        permissions_file=Path(args.permissions_file) if args.permissions_file else None,
    )
    await svc.load()
    micro = await add_service(
        nc, name="qserver-queue", version=qserver.__version__, metadata={"prefix": args.prefix}
    )
    await add_methods(micro, subjects.api, svc.handlers())
    await nc.subscribe(subjects.history_changed, cb=svc.on_history_changed)
    await nc.subscribe(subjects.lock_check, cb=svc.on_lock_check)
    await svc.executor.start()
    await svc.publish_status()
    tasks = [asyncio.create_task(svc.heartbeat()), asyncio.create_task(svc.fetch_history_info())]
    logger.info("queue service ready on %s (prefix %s)", args.nats_url, args.prefix)
    await wait_for_signal(svc.stop_requested)
    for t in tasks:
        t.cancel()
    await shutdown(micro.stop(), svc.log.close(), nc.drain())
    logger.info("queue service stopped: %s", svc.summary())
    return 0


def cli() -> None:
    p = service_arguments("python -m services.queue", __doc__)
    p.add_argument("--snapshot-every", type=int, default=2000)
    p.add_argument(
        "--lists-file",
        default=os.environ.get(
            "QSERVER_EXISTING_LISTS", str(SIM_PROFILE / "existing_plans_and_devices.json")
        ),
        help="existing plans and devices to validate against before an environment was opened",
    )
    p.add_argument(
        "--permissions-file",
        default=os.environ.get(
            "QSERVER_PERMISSIONS", str(SIM_PROFILE / "user_group_permissions.yaml")
        ),
        help="user group permissions (YAML), read at every start",
    )
    args = p.parse_args()
    setup_logging(args.log_level)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
