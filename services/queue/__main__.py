"""Entry point: `python -m services.queue --nats-url ... --prefix ...`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.micro import add_service

import qserver
from qserver.connect import connect_options, servers
from qserver.errors import Conflict, Refused
from qserver.jsutil import patiently, transient
from qserver.protocol.subjects import Subjects
from services.queue.leader import Lease, default_instance
from services.queue.service import QueueService
from services.queue.status_store import StatusStore
from services.runtime.console import ServiceConsole
from services.runtime.console_lines import logged
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

logger = logging.getLogger("services.queue")
SIM_PROFILE = Path(__file__).resolve().parents[2] / "sim_profile"
LEASE_LOST = 3


async def main(args: argparse.Namespace) -> int:
    subjects = Subjects(args.prefix)
    await wait_for_nats(args.nats_url)
    on_reconnect: list[Callable[[], None]] = []

    async def reconnected() -> None:
        for callback in on_reconnect:
            callback()

    nc = await nats.connect(
        servers(args.nats_url),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        reconnected_cb=reconnected,
        name="qserver-queue",
        **connect_options(args),
    )
    reply_to_inboxes_only(nc)  # before any subscription (ADR 11)
    console = ServiceConsole(nc, subjects)  # its log records on the console (ADR 18)
    await console.start()
    js = nc.jetstream()
    svc = QueueService(
        nc,
        js,
        subjects,
        emergency_lock_key=os.environ.get("QSERVER_EMERGENCY_LOCK_KEY_FOR_SERVER") or None,
        snapshot_every=args.snapshot_every,
        lists_file=Path(args.lists_file) if args.lists_file else None,
        permissions_file=Path(args.permissions_file) if args.permissions_file else None,
        replicas=args.replicas,
        instance=args.instance,
    )
    # The results feed's long pull may be lost with the connection: a new term at once.
    on_reconnect.append(svc.executor.results.reconnected)
    await patiently("loading the queue", svc.load)
    await svc.executor.watch()
    await svc.progress.watch()
    lease = Lease(nc, subjects, args.instance, replicas=args.replicas)
    await lease.open()
    if not await patiently("reading the leader lease", lease.try_acquire):
        logger.info("standby (instance %s): %s leads", args.instance, lease.holder)
        if not await lease.acquire(svc.stop_requested):
            await shutdown(console.stop(), nc.drain())
            return 0
        took_over = time.perf_counter()
        await patiently("loading the queue", svc.load_state)  # as the last leader left it
        logger.warning(
            "instance %s leads now; state loaded in %.1f ms",
            args.instance,
            (time.perf_counter() - took_over) * 1e3,
        )
    svc.on_lease_lost = lease_lost
    keeper = asyncio.create_task(lease.keep(lease_lost))
    # Writing the first event may be refused while JetStream settles ("try again").
    await patiently("taking the lead", lambda: svc.lead(lease), is_transient=not_yet)
    # The last status for plain `status` requests, answered by nats-server (ADR 35).
    status_store = StatusStore(js, subjects)
    await status_store.ensure()
    on_reconnect.append(status_store.reconnected)
    micro = await add_service(
        nc, name="qserver-queue", version=qserver.__version__, metadata={"prefix": args.prefix}
    )
    # A group of its own: should a hung former leader still hold its subscriptions, both
    # get every request and the live leader's answer comes first (the stale one refuses).
    served = await add_methods(
        micro,
        subjects.api,
        logged(svc.gated_handlers(), console),
        queue_group=f"leader-{args.instance}",
        nc=nc,
        extra_headers=svc.reply_headers,
        concurrent=frozenset({"queue_item_add"}),  # group commit (ADR 29)
    )
    await nc.subscribe(subjects.history_changed, cb=svc.on_history_changed)
    await nc.subscribe(subjects.lock_check, cb=svc.on_lock_check)
    await svc.executor.take_charge()
    await svc.publish_status()
    tasks = [asyncio.create_task(svc.heartbeat()), asyncio.create_task(svc.fetch_history_info())]
    logger.info(
        "queue service ready on %s (prefix %s, instance %s, leading)",
        args.nats_url,
        args.prefix,
        args.instance,
    )
    await wait_for_signal(svc.stop_requested)
    for t in [*tasks, keeper]:
        t.cancel()
    svc.executor.stop()
    # The results pull subscription goes first: nats-py's fetch never marks what it took as
    # done, so draining it would wait out the bound and log a CancelledError traceback.
    await shutdown(
        micro.stop(),
        served.wait(),  # adds being stored (served in tasks of their own) are answered
        status_store.forget(),  # a `status` after this is asked of the stopped service
        svc.executor.results.close(),
        svc.log.close(),
        lease.release(),
        console.stop(),
        nc.drain(),
    )
    logger.info("queue service stopped: %s", svc.summary())
    return 0


def not_yet(e: BaseException) -> bool:
    return transient(e) or isinstance(e, Refused | Conflict)


def lease_lost() -> None:
    """The lease can no longer be trusted: stop at once, before anything else is written.

    A supervisor (the stack, a container's restart policy) starts the service again, and it
    comes back as a standby.
    """
    logger.error("lost the leader lease: exiting (code %d) so that a standby leads", LEASE_LOST)
    logging.shutdown()
    os._exit(LEASE_LOST)


def cli() -> None:
    p = service_arguments("python -m services.queue", __doc__)
    p.add_argument(
        "--instance",
        default=os.environ.get("QSERVER_INSTANCE") or default_instance(),
        help="this instance's name in the leader lease ($QSERVER_INSTANCE; host-pid). Give "
        "each replica its own, kept across restarts: a restarted instance retakes its lease",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("QSERVER_JS_REPLICAS") or 1),
        help="JetStream replicas of the queue's streams and buckets ($QSERVER_JS_REPLICAS; 1)",
    )
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
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
