"""The connection gate with a real second OS user: another local user gets nothing.

The client runs as `nobody` (uid 65534): a child of the test that imports pyzmq as root
and gives up root before it makes its socket (the socket belongs to the user that made it).
Needs root, as CI and the developers' machines have.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

import pytest

from tests.conftest import Services
from tests.integration.zmq_support import Bridge, running_bridge, subscriber, zmq_client

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")

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


async def test_another_local_user_gets_no_answer_while_the_owner_is_served(
    module_services: Services,
) -> None:
    async with running_bridge(module_services) as bridge:
        foreign = asyncio.create_task(as_nobody("req", bridge.control, 5.0))
        states = await owner_requests(bridge, 20)  # while nobody knocks
        assert await foreign == "nothing"
        assert len(states) == 20 and all(states)
        log = bridge.log()
        assert "refused a 0MQ connection to the control socket" in log
        assert f"(uid {NOBODY})" in log
        assert log.count("refused a 0MQ connection") <= 2  # said once, not at every retry


async def test_another_local_user_reads_no_console_nor_status(module_services: Services) -> None:
    async with running_bridge(module_services) as bridge:
        foreign = asyncio.create_task(as_nobody("sub", bridge.info, 5.0))
        async with subscriber(bridge.info, b"QS_Info") as sub:
            topic, _ = await sub.next(timeout=30)  # status is published once a second
        assert topic == b"QS_Info"
        assert await foreign == "nothing"
        assert "refused a 0MQ connection to the info socket from 127.0.0.1" in bridge.log()


async def test_local_users_any_lets_every_local_user_in_as_the_reference(
    module_services: Services,
) -> None:
    async with running_bridge(module_services, "--local-users", "any") as bridge:
        assert await as_nobody("req", bridge.control, 30.0) == "answered"
        assert await as_nobody("sub", bridge.info, 30.0) == "answered"
