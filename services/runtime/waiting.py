"""Start-up patience: a service started before NATS answers waits for it, and says so.

The JetStream side of the same patience is `qserver.jsutil.patiently` (streams, buckets,
reads while a cluster elects its leaders). Neither ever gives up: a service that exits
because its infrastructure is late only adds a restart loop to the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse

from qserver.connect import servers

logger = logging.getLogger(__name__)

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 2.0
REPORT_EVERY_S = 10.0
TCP_SCHEMES = {"nats": 4222, "tls": 4222, "": 4222}


async def _answers(server: str, timeout: float) -> str | None:
    """None if a TCP connection to `server` opens; else why not."""
    parts = urllib.parse.urlsplit(server if "://" in server else f"nats://{server}")
    if parts.scheme not in TCP_SCHEMES:
        return None  # websocket URLs and such: leave it to the client
    host, port = parts.hostname or "localhost", parts.port or TCP_SCHEMES[parts.scheme]
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as e:
        return f"{host}:{port}: {getattr(e, 'strerror', None) or e!r}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def wait_for_nats(url: str, timeout: float = 2.0) -> None:
    """Return once one of `url`'s servers accepts connections, backing off up to 2 s."""
    delay = FIRST_DELAY_S
    started = time.monotonic()
    reported = 0.0
    while True:
        why = [await _answers(s, timeout) for s in servers(url)]
        if None in why:
            if reported:
                logger.info("NATS at %s answers after %.1f s", url, time.monotonic() - started)
            return
        now = time.monotonic()
        if not reported or now - reported >= REPORT_EVERY_S:
            logger.warning("waiting for NATS at %s (%s)", url, "; ".join(w for w in why if w))
            reported = now
        await asyncio.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_S)
