"""Entry point: `python -m services.gateway --nats-url ... --prefix ... --port 60610`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from qserver.connect import connect_options
from qserver.protocol.subjects import Subjects
from services.gateway.app import build_app
from services.gateway.authstore import AuthStore
from services.gateway.bridge import Bridge
from services.gateway.config import AuthOptions, ConfigError, load_authenticator
from services.gateway.connections import ConnectionLimits, uvicorn_options
from services.runtime.quiet_uvicorn import QuietServer
from services.runtime.service_base import run_loop, service_arguments, setup_logging

logger = logging.getLogger("services.gateway")
DEFAULT_PORT = 60610


class Server(QuietServer):
    """uvicorn's server, stopped by SIGINT/SIGTERM like the other services: exit code 0.

    uvicorn's own handling re-raises the signal after shutting down, so a stopped gateway
    would look killed to its supervisor.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def main(args: argparse.Namespace) -> int:
    opts = AuthOptions(
        config_file=args.http_config,
        single_user_key_file=args.single_user_key_file,
        allow_anonymous=args.allow_anonymous,
        no_auth=args.no_auth,
    )
    if args.no_auth and not is_loopback(args.host):
        logger.error("--no-auth serves anyone who can connect: it needs a loopback --host")
        return 2
    bridge = Bridge(args.nats_url, args.prefix, args.timeout, connect_options(args))
    bucket = Subjects(args.prefix).auth_bucket
    if args.auth_store:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", args.auth_store):
            logger.error("--auth-store must be letters, digits, - and _: %r", args.auth_store)
            return 2
        bucket = f"{bucket}_{args.auth_store}"
    try:
        auth = load_authenticator(opts, lambda: AuthStore(bridge.connected, bucket, args.timeout))
    except ConfigError as e:
        logger.error("%s", e)
        return 2
    app = build_app(bridge, auth)
    limits = ConnectionLimits(
        idle_s=args.idle_timeout,
        request_s=args.request_timeout,
        stalled_write_s=args.request_timeout,
        ws_ping_s=args.ws_ping_interval,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        log_config=None,  # uvicorn's records go through our handler (text or JSON)
        access_log=False,
        lifespan="on",
        ws="websockets-sansio",
        **uvicorn_options(limits),
    )
    logger.info("gateway on http://%s:%d (prefix %s)", args.host, args.port, args.prefix)
    await Server(config).serve()
    logger.info("gateway stopped")
    return 0


def cli() -> None:
    p = service_arguments("python -m services.gateway", __doc__)
    p.add_argument(
        "--host",
        default=os.environ.get("QSERVER_HTTP_HOST", "127.0.0.1"),
        help="address to listen on (default 127.0.0.1)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("QSERVER_HTTP_PORT", DEFAULT_PORT)),
        help=f"port to listen on (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "--http-config",
        type=Path,
        default=None,
        help="YAML file: bluesky-httpserver's configuration (logins: authentication, api_access, "
        "resource_access), or the gateway's own API keys (or $QSERVER_HTTP_CONFIG)",
    )
    p.add_argument(
        "--auth-store",
        default=os.environ.get("QSERVER_HTTP_AUTH_STORE", ""),
        help="a separate set of logins on this queue server: the bucket QS_<PREFIX>_AUTH_<NAME> "
        "(tests; or $QSERVER_HTTP_AUTH_STORE). Gateways that share logins share it",
    )
    p.add_argument(
        "--single-user-key-file",
        type=Path,
        default=None,
        help="file holding the single-user API key (or $QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY)",
    )
    p.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="requests without a key get read-only scopes (read:status unless configured)",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="no keys at all: every request acts as the single user (loopback hosts only)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("QSERVER_HTTP_TIMEOUT", 10.0)),
        help="seconds to wait for a service's reply before answering 503 (default 10)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get("QSERVER_HTTP_IDLE_TIMEOUT", 5.0)),
        help="seconds a connection may stay open with no request in progress (default 5)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=float(os.environ.get("QSERVER_HTTP_REQUEST_TIMEOUT", 10.0)),
        help="seconds a client has to send a whole request, from its first byte, and to take "
        "the next part of an answer (default 10)",
    )
    p.add_argument(
        "--ws-ping-interval",
        type=float,
        default=float(os.environ.get("QSERVER_HTTP_WS_PING_INTERVAL", 20.0)),
        help="seconds between WebSocket pings; a socket that does not answer one within as "
        "long is closed (default 20)",
    )
    args = p.parse_args()
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
