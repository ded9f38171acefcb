"""The connection gate with a real second OS user: another local user gets nothing.

The client runs as `nobody` (uid 65534): a child of the test that imports pyzmq as root
and gives up root before it makes its socket (the socket belongs to the user that made it).
Those tests need root, as CI and the developers' machines have.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
import time

import pytest
import zmq
import zmq.asyncio

from services.zmq_bridge.gate import CONTROL_DOMAIN, ZAP_ENDPOINT, Gate, Policy
from tests.conftest import Services
from tests.integration.zmq_support import Bridge, running_bridge, subscriber, zmq_client

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")

CLIENT = textwrap.dedent(
    """
    import os, sys, zmq
    kind, address, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    os.setgroups([]); os.setgid({uid}); os.setuid({uid})
    ctx = zmq.Context()
    s = ctx.socket(zmq.REQ if kind == "req" else zmq.SUB)
    s.linger = 0
    if kind == "sub":
        s.subscribe(b"")
    s.connect(address)
    if kind == "req":
        s.send_json({{"method": "status"}})
    print("answered" if s.poll(int(seconds * 1000)) else "nothing", os.getuid(), flush=True)
    """
).format(uid=NOBODY)


async def as_nobody(kind: str, address: str, seconds: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        kind,
        address,
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    text = out.decode().split()
    assert text[1] == str(NOBODY)
    return text[0]


async def owner_requests(bridge: Bridge, n: int) -> list[str]:
    """`n` status requests of this (the owner's) process, each on a new connection."""
    states = []
    for _ in range(n):
        async with zmq_client(bridge.control) as z:
            states.append(str((await z.request("status", timeout=30))["manager_state"]))
    return states


@needs_root
async def test_another_local_user_gets_no_answer_while_the_owner_is_served(
    module_services: Services,
) -> None:
    async with running_bridge(module_services) as bridge:
        # Refused, the client reconnects every 0.1 s: the owner's connections meet its cuts.
        foreign = asyncio.create_task(as_nobody("req", bridge.control, 8.0))
        states = await owner_requests(bridge, 50)
        assert await foreign == "nothing"
        assert len(states) == 50 and all(states)
    log = bridge.log()
    assert "refused a 0MQ connection to the control socket" in log
    assert f"(uid {NOBODY})" in log
    assert log.count("refused a 0MQ connection") == 1  # said once, not at every retry
    refused = int(re.search(r"(\d+) connections refused", log).group(1))  # type: ignore[union-attr]
    assert refused > 3, log[-2000:]


@needs_root
async def test_another_local_user_reads_no_console_nor_status(module_services: Services) -> None:
    async with running_bridge(module_services) as bridge:
        foreign = asyncio.create_task(as_nobody("sub", bridge.info, 5.0))
        async with subscriber(bridge.info, b"QS_Info") as sub:
            topic, _ = await sub.next(timeout=30)  # status is published once a second
        assert topic == b"QS_Info"
        assert await foreign == "nothing"
        assert "refused a 0MQ connection to the info socket from 127.0.0.1" in bridge.log()


@needs_root
async def test_local_users_any_lets_every_local_user_in_as_the_reference(
    module_services: Services,
) -> None:
    async with running_bridge(module_services, "--local-users", "any") as bridge:
        assert await as_nobody("req", bridge.control, 30.0) == "answered"
        assert await as_nobody("sub", bridge.info, 30.0) == "answered"


async def test_a_handshake_that_meets_a_refused_connection_is_held_then_let_in() -> None:
    """While a refused connection is being cut, a loopback handshake may be its, or the
    owner's: it is held until the cut one is reported gone, then let in (a REQ client
    refused once would never try again). The gate runs in this process; a ZAP client of
    ours asks as libzmq does; the cut is marked pending as `_check` marks it, and reported
    gone as the monitor reports it (it is otherwise over within a millisecond)."""
    ctx = zmq.asyncio.Context()
    gate = Gate(ctx, Policy())
    zap_client = ctx.socket(zmq.DEALER)
    zap_client.linger = 0
    zap_client.connect(ZAP_ENDPOINT)
    running = asyncio.create_task(gate.run())
    request = [b"", b"1.0", b"7", CONTROL_DOMAIN, b"127.0.0.1", b"", b"NULL"]
    try:
        gate.cut_pending[99] = (1, time.monotonic())
        await zap_client.send_multipart(request)
        with pytest.raises(TimeoutError):  # held, not refused
            async with asyncio.timeout(0.5):
                await zap_client.recv_multipart()
        gate._gone(99)
        async with asyncio.timeout(30):
            reply = await zap_client.recv_multipart()
        assert reply == [b"", b"1.0", b"7", b"200", b"OK", b"local", b""]
        # From another machine, without a listed key: refused at once, never held.
        gate.cut_pending[99] = (1, time.monotonic())
        await zap_client.send_multipart([*request[:4], b"10.1.2.3", *request[5:]])
        async with asyncio.timeout(30):
            reply = await zap_client.recv_multipart()
        assert reply[3] == b"400"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        zap_client.close()
        gate.close()
        ctx.term()
