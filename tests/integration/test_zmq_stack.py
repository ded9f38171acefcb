"""`qserver stack up` runs the 0MQ bridge with its own NATS key; `--no-zmq` leaves it out."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import msgspec
import pytest
import zmq

from qserver.client import Client
from services.runtime.procs import tcp_ready
from services.stack.natsserver import free_port
from tests.conftest import USER, plan
from tests.integration.test_stack import StackProcess, Stacks
from tests.integration.zmq_support import subscriber, zmq_client


async def announced(stack: StackProcess, timeout: float = 60.0) -> str:
    """The stack's output once it has said it is up (stack.json is written just before)."""
    async with asyncio.timeout(timeout):
        while "qserver stack is up" not in (out := stack.output()):
            await asyncio.sleep(0.05)
    return out


async def test_the_stack_serves_the_reference_protocol_over_zmq(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    assert "zmq_bridge" in info["services"]
    assert info["zmq_public_key"] is None  # no key given: no encryption
    assert (stacks.data_dir / "nats-keys" / "zmq_bridge.nk").exists()
    control, info_addr = info["zmq_control_addr"], info["zmq_info_addr"]
    assert control.startswith("tcp://127.0.0.1:") and info_addr.startswith("tcp://127.0.0.1:")
    assert f"0MQ       {control}" in await announced(stack)
    async with zmq_client(control) as z:
        added = await z.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    assert added["success"], added
    client = await Client.connect()  # as a user finds the stack: through stack.json
    try:
        items = (await client.request("queue_get"))["items"]
    finally:
        await client.close()
    assert [i["item_uid"] for i in items] == [added["item"]["item_uid"]]
    async with subscriber(info_addr, b"QS_Info") as sub:
        _, payload = await sub.next(timeout=30)
    assert msgspec.json.decode(payload)["msg"]["status"]["items_in_queue"] == 1


async def test_no_zmq_runs_no_bridge(stacks: Stacks) -> None:
    port = free_port()
    stack = stacks.start("--no-zmq", "--zmq-port", str(port))
    info = await stack.wait_info()
    assert "zmq_bridge" not in info["services"]
    assert info["zmq_control_addr"] is None and info["zmq_info_addr"] is None
    assert not tcp_ready("127.0.0.1", port, 0.5)
    assert "0MQ" not in await announced(stack)


async def test_a_zmq_port_in_use_stops_the_start_with_the_flag_to_change(stacks: Stacks) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        stack = stacks.start("--zmq-port", str(taken.getsockname()[1]))
        assert await stack.wait_exit(timeout=60) == 1
    assert "--zmq-port" in stack.output() and "--no-zmq" in stack.output()


async def test_a_killed_bridge_is_restarted_and_serves_again(stacks: Stacks) -> None:
    stack = stacks.start()
    info = await stack.wait_info()
    pid = info["services"]["zmq_bridge"]
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(60):
        while (info := await stack.wait_info())["services"]["zmq_bridge"] == pid:
            await asyncio.sleep(0.1)
    assert "zmq_bridge service was killed by SIGKILL: restarted" in stack.output()
    async with zmq_client(info["zmq_control_addr"]) as z:
        assert (await z.request("status", timeout=60))["manager_state"] == "idle"


async def test_the_stack_encrypts_with_the_key_in_its_environment(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch
) -> None:
    public, secret = (k.decode() for k in zmq.curve_keypair())
    monkeypatch.setenv("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", secret)  # the stack hands it on
    stack = stacks.start()
    info = await stack.wait_info()
    assert info["zmq_public_key"] == public
    assert f"CurveZMQ, public key {public}" in await announced(stack)
    async with zmq_client(info["zmq_control_addr"], server_key=public) as z:
        assert (await z.request("status", timeout=60))["manager_state"] == "idle"
    async with zmq_client(info["zmq_control_addr"]) as z:
        with pytest.raises(TimeoutError):
            await z.request("status", timeout=3)
