"""Container health check: `python -m qserver.healthcheck SERVICE`, exit 0 when healthy.

For `queue`, `history` and `worker`: an instance of `qserver-<SERVICE>` with this prefix
($QSERVER_PREFIX) answers `$SRV.PING`, reached with this container's NATS settings
($QSERVER_NATS_URL and the QSERVER_NATS_* credentials). For `gateway`: the HTTP gateway on
this container ($QSERVER_HTTP_PORT) answers. With two replicas, an answer from either
counts: the check says the service is there, the orchestrator restarts a dead process.
"""

from __future__ import annotations

import asyncio
import os
import sys

from qserver.client import AccessDenied, Client, NoAnswer
from qserver.connect import NatsConfigError
from qserver.doctor import MICRO_SERVICES, check_http, ping

GATEWAY_PORT = 60610


async def service_answers(name: str) -> str | None:
    """None if an instance answers, else what is wrong."""
    try:
        client = await Client.connect(timeout=2.0)
    except (NoAnswer, AccessDenied, NatsConfigError) as e:
        return str(e)
    try:
        if await ping(client, f"qserver-{name}", wait=1.0):
            return None
        return f"no qserver-{name} with prefix '{client.subjects.prefix}' answers $SRV.PING"
    finally:
        await client.close()


def gateway_answers() -> str | None:
    port = os.environ.get("QSERVER_HTTP_PORT", str(GATEWAY_PORT))
    check = check_http("gateway", f"http://127.0.0.1:{port}", "/docs", timeout=2.0)
    return None if check.status == "ok" else check.detail


def main(argv: list[str]) -> int:
    known = (*MICRO_SERVICES, "gateway")
    if len(argv) != 1 or argv[0] not in known:
        print(f"usage: python -m qserver.healthcheck {{{','.join(known)}}}", file=sys.stderr)
        return 2
    name = argv[0]
    problem = gateway_answers() if name == "gateway" else asyncio.run(service_answers(name))
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
