"""Entry point: `python -m services.zmq_bridge --nats-url ... --prefix ...`.

Serves the reference's 0MQ control protocol (REQ/REP, JSON `{method, params}`, port 60615)
and its console feed (PUB, port 60625) in front of the NATS API, so that the reference's
`REManagerAPI()`, `qserver` CLI and `qserver-console-monitor` work unchanged (ADR 19).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import zmq
import zmq.asyncio

from qserver.config import env_flag
from qserver.connect import connect_options
from qserver.protocol.api import MAX_REQUEST_BYTES
from services.runtime.service_base import (
    run_loop,
    service_arguments,
    setup_logging,
    shutdown,
    wait_for_signal,
)
from services.zmq_bridge.gate import CONTROL_DOMAIN, INFO_DOMAIN, Gate
from services.zmq_bridge.link import NatsLink
from services.zmq_bridge.publisher import InfoPublisher
from services.zmq_bridge.server import ControlServer
from services.zmq_bridge.settings import (
    DEFAULT_CONTROL_ADDR,
    DEFAULT_INFO_ADDR,
    Endpoint,
    Settings,
    SettingsError,
    from_args,
)

logger = logging.getLogger("services.zmq_bridge")
# Larger messages end the connection in libzmq; up to it, the bridge answers "too large".
MAX_MESSAGE_BYTES = 4 * MAX_REQUEST_BYTES


def open_socket(
    ctx: zmq.asyncio.Context, kind: int, where: Endpoint, gate: Gate, domain: bytes, what: str
) -> zmq.asyncio.Socket:
    sock: zmq.asyncio.Socket = ctx.socket(kind)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    if where.ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    gate.guard(sock, domain, what)
    return sock


def bind(sock: zmq.asyncio.Socket, where: Endpoint, what: str) -> None:
    try:
        sock.bind(where.url)
    except zmq.ZMQError as e:
        raise SettingsError(f"cannot listen on {where.url} ({what}): {e}") from None


async def main(args: argparse.Namespace) -> int:
    try:
        s = from_args(args)
    except SettingsError as e:
        logger.error("%s", e)
        return 2
    ctx = zmq.asyncio.Context()
    gate = Gate(ctx, s.policy)
    control = open_socket(ctx, zmq.ROUTER, s.control, gate, CONTROL_DOMAIN, "control")
    if s.private_key is not None:
        control.curve_server = True
        control.curve_secretkey = s.private_key.encode()
    info = (
        open_socket(ctx, zmq.XPUB, s.info, gate, INFO_DOMAIN, "info")
        if s.info is not None
        else None
    )
    publisher = InfoPublisher(info, s.encoding) if info is not None else None
    link = NatsLink(
        args.nats_url,
        args.prefix,
        s.timeout,
        connect_options(args),
        on_console=publisher.console if publisher else None,
        on_status=publisher.status if publisher else None,
    )
    if publisher is not None:
        publisher.on_console_wanted = link.follow_console
    server = ControlServer(control, link, encoding=s.encoding, clients=s.policy.clients)
    # Listen once connected (or after a few seconds without NATS, then answering why not):
    # a reference client waits for the socket by itself, within its own timeout.
    await link.start()
    try:
        bind(control, s.control, "control")
        if info is not None and s.info is not None:
            bind(info, s.info, "info")
    except SettingsError as e:
        logger.error("%s", e)
        await shutdown(link.stop())
        gate.close()
        ctx.destroy(linger=0)
        return 2
    tasks = [asyncio.create_task(gate.run()), asyncio.create_task(server.run())]
    if publisher is not None:
        tasks.append(asyncio.create_task(publisher.watch()))
    announce(s)
    stop = asyncio.Event()
    for t in tasks:
        t.add_done_callback(lambda _: stop.set())  # a crashed loop ends the process
    await wait_for_signal(stop)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    crashed = [t.exception() for t in tasks if not t.cancelled() and t.exception()]
    for error in crashed:
        logger.error("the 0MQ bridge stopped on an error: %r", error)
    await shutdown(link.stop())
    gate.close()
    ctx.destroy(linger=0)
    c = server.counters
    logger.info(
        "0MQ bridge stopped: %d requests (%d refused, %d unanswered), %d connections refused",
        c.requests,
        c.refused,
        c.failed,
        gate.refused,
    )
    return 1 if crashed else 0


def announce(s: Settings) -> None:
    curve = f"CurveZMQ on, public key {s.public_key}" if s.public_key else "no encryption"
    info = s.info.url if s.info else "off"
    logger.info(
        "0MQ bridge: control %s (%s, %s), console %s; local users: %s, %d client keys",
        s.control.url,
        s.encoding,
        curve,
        info,
        s.policy.local_users,
        len(s.policy.clients),
    )


def cli() -> None:
    p = service_arguments("python -m services.zmq_bridge", __doc__)
    env = os.environ.get
    p.add_argument(
        "--control-addr",
        default=env("QSERVER_ZMQ_CONTROL_ADDRESS_FOR_SERVER") or DEFAULT_CONTROL_ADDR,
        help="the REQ/REP control socket ($QSERVER_ZMQ_CONTROL_ADDRESS_FOR_SERVER; "
        f"{DEFAULT_CONTROL_ADDR}); beyond loopback it needs CurveZMQ and client keys",
    )
    p.add_argument(
        "--info-addr",
        default=env("QSERVER_ZMQ_INFO_ADDRESS_FOR_SERVER") or DEFAULT_INFO_ADDR,
        help="the PUB socket of console output and status ($QSERVER_ZMQ_INFO_ADDRESS_FOR_SERVER; "
        f"{DEFAULT_INFO_ADDR})",
    )
    p.add_argument(
        "--no-console",
        dest="publish_console",
        action="store_false",
        default=env_flag("QSERVER_ZMQ_PUBLISH_CONSOLE"),
        help="do not publish console output and status ($QSERVER_ZMQ_PUBLISH_CONSOLE=0)",
    )
    p.add_argument(
        "--encoding",
        default=(env("QSERVER_ZMQ_ENCODING_FOR_SERVER") or "json").lower(),
        help="json or msgpack, for every 0MQ message ($QSERVER_ZMQ_ENCODING_FOR_SERVER; json)",
    )
    p.add_argument(
        "--private-key-file",
        type=Path,
        default=None,
        help="file holding the CurveZMQ private key (else $QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER; "
        "none: no encryption)",
    )
    p.add_argument(
        "--client-keys",
        default=env("QSERVER_ZMQ_CLIENT_KEYS") or None,
        help="YAML file mapping CurveZMQ client public keys to users ($QSERVER_ZMQ_CLIENT_KEYS)",
    )
    p.add_argument(
        "--local-users",
        default=env("QSERVER_ZMQ_LOCAL_USERS") or "owner",
        help="who may connect over loopback: 'owner' (this OS user and root) or 'any' "
        "($QSERVER_ZMQ_LOCAL_USERS; owner)",
    )
    p.add_argument(
        "--info-public",
        action="store_true",
        default=env("QSERVER_ZMQ_INFO_PUBLIC", "").lower() in ("1", "true", "on", "yes"),
        help="allow a non-loopback info address: console and status readable by anyone who "
        "reaches it ($QSERVER_ZMQ_INFO_PUBLIC)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=float(env("QSERVER_ZMQ_TIMEOUT") or 10.0),
        help="seconds to wait for a service's reply ($QSERVER_ZMQ_TIMEOUT; 10)",
    )
    args = p.parse_args()
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
