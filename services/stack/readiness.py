"""The stack's start-up checks, run in a short-lived child of the supervisor (ADR 33).

The supervisor stays resident for the whole life of a stack, so it keeps to the standard
library's lightest modules; what only start-up needs (a NATS client, asyncio, the gateway's
configuration loader, 0MQ) is imported here, in a process that exits once the stack is up.

    python -m services.stack.readiness ready         # a plan on stdin (below)
    python -m services.stack.readiness http-config PATH
    python -m services.stack.readiness kafka-topic BOOTSTRAP TOPIC

`ready` reads a JSON plan on stdin:

    {"nats_url": ..., "prefix": ..., "timeout_s": 20,
     "roles": {"operator": {QSERVER_NATS_* of that role} | {}},
     "checks": [{"name": "queue", "role": "operator"},
                {"name": "gateway", "http": "http://127.0.0.1:60610/docs"},
                {"name": "zmq_bridge", "tcp": ["127.0.0.1", 60615]}],
     "zmq": true}

and writes one JSON line per event, in the order of the checks: `{"name": n, "ready": true}`,
`{"name": n, "late": "did not answer '...' within 20 s"}` (then it stops), `{"error": text}`
(NATS refused the connection), and last, if asked, `{"zmq": {"public_key": ..., "any_local_user":
...}}`. The supervisor watches the services themselves (an exit while starting) and the signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.runtime.procs import http_ready, readiness_probe, tcp_ready

POLL_S = 0.05


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def wait_ready(plan: dict[str, Any]) -> int:
    from qserver.client import AccessDenied, Client, NoAnswer
    from qserver.connect import NatsAuth

    deadline = time.monotonic() + float(plan["timeout_s"])
    clients: dict[str, Client] = {}
    try:
        for role, env in sorted(plan["roles"].items()):
            auth = NatsAuth.from_env({**os.environ, **env}) if env else None
            try:
                # nats.py retries a failed connect forever, so bound it here.
                clients[role] = await asyncio.wait_for(
                    Client.connect(plan["nats_url"], plan["prefix"], timeout=1.0, auth=auth),
                    max(deadline - time.monotonic(), 1.0),
                )
            except (TimeoutError, NoAnswer, AccessDenied) as e:
                emit({"error": f"cannot connect to NATS at {plan['nats_url']}: {e}"})
                return 1
        for check in plan["checks"]:
            name = check["name"]
            probe, late = _probe(check, clients, plan["timeout_s"])
            while not await probe():
                if time.monotonic() > deadline:
                    emit({"name": name, "late": late})
                    return 1
                await asyncio.sleep(POLL_S)
            emit({"name": name, "ready": True})
    finally:
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.close()
    if plan.get("zmq"):
        emit({"zmq": zmq_settings()})
    return 0


def _probe(
    check: dict[str, Any], clients: dict[str, Any], timeout_s: float
) -> tuple[Callable[[], Awaitable[bool]], str]:
    """One try of `check` (True: it answered), and what to say if it never does."""
    if "http" in check:
        url = check["http"]
        return (lambda: asyncio.to_thread(http_ready, url, 0.5)), "did not answer"
    if "tcp" in check:
        host, port = check["tcp"]
        return (lambda: asyncio.to_thread(tcp_ready, host, port, 0.5)), "did not listen"
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    client = clients[check["role"]]
    subject, body = readiness_probe(check["name"], client.subjects)

    async def asked() -> bool:
        try:
            await client.nc.request(subject, body, timeout=1.0)
        except (NoRespondersError, NatsTimeout):
            return False
        return True

    return asked, f"did not answer '{subject}' within {timeout_s:g} s"


def zmq_settings() -> dict[str, Any]:
    """The bridge's CurveZMQ public key (None: no encryption) and who may connect."""
    from qserver.config import ConfigError, apply
    from services.zmq_bridge.keys import BadKey, public_key_of
    from services.zmq_bridge.settings import OLD_PRIVATE_KEY_ENV, PRIVATE_KEY_ENV

    environ = dict(os.environ)
    with contextlib.suppress(ConfigError):  # the bridge refuses it and says why
        apply(environ, os.environ.get("QSERVER_CONFIG"))
    key = environ.get(PRIVATE_KEY_ENV) or environ.get(OLD_PRIVATE_KEY_ENV)
    public = None
    if key:
        with contextlib.suppress(BadKey):  # the bridge refuses it and says why
            public = public_key_of(key)
    return {"public_key": public, "any_local_user": environ.get("QSERVER_ZMQ_LOCAL_USERS") == "any"}


def check_http_config(path: str) -> int:
    """Refuse at once a gateway configuration the gateway would refuse (it names what is wrong)."""
    from pathlib import Path

    from services.gateway.authstore import AuthStore
    from services.gateway.config import AuthOptions, load_authenticator
    from services.gateway.hsconfig import ConfigError

    def offline() -> Any:
        raise ConfigError("not connected")

    try:
        load_authenticator(AuthOptions(config_file=Path(path)), lambda: AuthStore(offline, "check"))
    except ConfigError as e:
        emit({"error": f"--http-config {path}: {e}"})
        return 1
    return 0


def create_kafka_topic(bootstrap: str, topic: str) -> int:
    """The document topic, with one partition: the documents of a run must stay in order
    (a topic the broker creates by itself gets four)."""
    from services.stack.kafka_broker import create_topic

    try:
        create_topic(bootstrap, topic, partitions=1)
    except Exception as e:
        emit({"error": f"the Kafka broker did not create topic '{topic}': {e}"})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["ready"]:
        return asyncio.run(wait_ready(json.load(sys.stdin)))
    if args[:1] == ["http-config"] and len(args) == 2:
        return check_http_config(args[1])
    if args[:1] == ["kafka-topic"] and len(args) == 3:
        return create_kafka_topic(args[1], args[2])
    print(
        "usage: python -m services.stack.readiness ready | http-config PATH | "
        "kafka-topic BOOTSTRAP TOPIC",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
