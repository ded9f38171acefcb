"""The 0MQ bridge in front of the real services, driven by a plain pyzmq REQ client.

The reference's framing and replies, bad requests answered while the bridge goes on, large
replies whole, the console and status feed, msgpack, and CurveZMQ with the right key, a
wrong key and client keys mapped to users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
import zmq

from qserver.client import Client
from services.stack.natsserver import NatsServer, free_port
from tests.conftest import USER, Services, plan, report, unique_prefix
from tests.integration.zmq_support import (
    Bridge,
    bridge_on,
    running_bridge,
    subscriber,
    zmq_client,
)


@pytest.fixture(scope="module")
async def bridge(module_services: Services) -> AsyncIterator[Bridge]:
    async with running_bridge(module_services) as b:
        yield b


async def test_status_and_queue_over_zmq_match_nats(
    bridge: Bridge, module_services: Services
) -> None:
    client = module_services.client
    assert client is not None
    async with zmq_client(bridge.control) as z:
        assert (await z.request("ping"))["manager_state"] in ("idle", "executing_queue")
        status = await z.request("status")
        assert "items_in_queue" in status and "plan_queue_uid" in status
        added = await z.request(
            "queue_item_add", {"item": plan("count", ["det1"]), **USER, "pos": "back"}
        )
        assert added["success"], added
        assert added["item"]["user"] == USER["user"]
        uid = added["item"]["item_uid"]
        over_zmq = await z.request("queue_get")
        over_nats = await client.request("queue_get")
        assert over_zmq["items"] == over_nats["items"]
        assert uid in [i["item_uid"] for i in over_zmq["items"]]
        assert (await z.request("queue_item_remove", {"uid": uid}))["success"]


async def test_status_over_zmq_is_answered_from_the_push_and_shows_every_write(
    bridge: Bridge, module_services: Services
) -> None:
    """The bridge follows the status events (ADR 29): a 0MQ `status` is answered by the bridge
    without a NATS request while the copy is fresh, and a write made through the bridge is
    in the very next `status`."""
    client = module_services.client
    assert client is not None
    asked = 0  # every `status` request sent to the queue service over NATS

    async def count(_msg: object) -> None:
        nonlocal asked
        asked += 1

    sub = await client.nc.subscribe(client.subjects.api("status"), cb=count)
    await client.nc.flush()
    try:
        async with zmq_client(bridge.control) as z:
            before = (await z.request("status"))["items_in_queue"]
            uids = []
            for n in range(1, 21):
                added = await z.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
                assert added["success"], added
                uids.append(added["item"]["item_uid"])
                assert (await z.request("status"))["items_in_queue"] == before + n
            await client.nc.flush()
            through = asked
            for _ in range(100):
                assert (await z.request("status"))["items_in_queue"] == before + 20
            await client.nc.flush()
            # Some of these may go the long way (a copy older than its period + margin on
            # a busy machine), not most: with a fresh copy none does.
            assert asked - through < 50, (asked, through)
            for uid in uids:
                assert (await z.request("queue_item_remove", {"uid": uid}))["success"]
    finally:
        await sub.unsubscribe()


async def test_status_is_answered_at_once_while_every_slot_waits_on_a_hung_service(
    services: Services,
) -> None:
    """`status` from the pushed status needs no slot: with the history service stopped and
    as many `history_get` requests waiting on it as the bridge takes at a time (64), a
    `status` is still answered at once; the waiting requests are answered once it goes on."""
    history = services.procs["history"].proc
    assert history is not None
    async with running_bridge(services) as b, contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(zmq_client(b.control)) for _ in range(64)]
        async with zmq_client(b.control) as z:
            assert (await z.request("status"))["manager_state"] == "idle"
            history.send_signal(signal.SIGSTOP)
            try:
                waiting = [
                    asyncio.create_task(c.request("history_get", timeout=120)) for c in clients
                ]
                await asyncio.sleep(0)  # sent
                for _ in range(20):
                    st = await z.request("status", timeout=10)
                    assert st["manager_state"] == "idle", st
                assert not any(t.done() for t in waiting)
            finally:
                history.send_signal(signal.SIGCONT)
            replies = await asyncio.gather(*waiting)
    assert all("items" in r for r in replies), [r for r in replies if "items" not in r][:1]


async def test_bad_requests_are_answered_and_the_bridge_keeps_serving(bridge: Bridge) -> None:
    async with zmq_client(bridge.control) as z:
        bad = {
            b"{not json": "Failed to decode the request: JSON decode error",
            b"[1, 2]": "Incorrect request type: <class 'list'>",
            b'{"params": {}}': "method is not specified",
            b'{"method": "status", "x": 1}': "Request contains unexpected keys ['x']",
            b'{"method": "no_such_method"}': "Unknown method 'no_such_method'",
            b'{"method": "queue_item_get", "params": {"pos": "middle"}}': "Parameter 'pos'",
            b"\xff\xfe": "Failed to decode the request",
        }
        for body, text in bad.items():
            reply = msgspec.json.decode(await z.raw(body))
            assert reply["success"] is False, (body, reply)
            assert text in reply["msg"], (body, reply)
        assert "manager_state" in await z.request("status")
    assert bridge.proc.alive()


async def test_requests_of_many_clients_are_answered_side_by_side(bridge: Bridge) -> None:
    async def one(n: int) -> str:
        async with zmq_client(bridge.control) as z:
            return str((await z.request("status"))["manager_state"])

    states = await asyncio.gather(*(one(n) for n in range(20)))
    assert len(states) == 20 and all(states)


async def test_a_reply_larger_than_a_nats_message_comes_back_whole(
    services: Services,
) -> None:
    client = services.client
    assert client is not None
    n = 10_000  # ~1.6 MB of queue: more than NATS's 1 MiB message
    for start in range(0, n, 1000):
        items = [plan("count", ["det1", "det2"], num=start + i) for i in range(1000)]
        r = await client.request("queue_item_add_batch", {"items": items, **USER}, timeout=60)
        assert r["success"], r["msg"]
    async with running_bridge(services) as b, zmq_client(b.control) as z:
        t0 = time.perf_counter()
        body = await z.raw(msgspec.json.encode({"method": "queue_get"}), timeout=60)
        took = time.perf_counter() - t0
    assert len(body) > client.nc.max_payload
    reply = msgspec.json.decode(body)
    nums = [item["kwargs"]["num"] for item in reply["items"]]
    assert nums == list(range(n))
    report(f"queue_get of {n:,} items over 0MQ: {len(body):,} bytes in {took * 1e3:.0f} ms")


async def test_console_output_is_published_as_the_references(
    bridge: Bridge, module_services: Services
) -> None:
    client = module_services.client
    assert client is not None
    async with subscriber(bridge.info, b"QS_Console") as sub:
        # The subscription takes a moment to reach the publisher: say it until it is heard.
        for attempt in range(300):
            await client.nc.publish(
                client.subjects.console_event,
                msgspec.json.encode({"time": 1700000000.5, "msg": f"line {attempt}\n"}),
            )
            try:
                topic, payload = await sub.next(timeout=0.2)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail(f"no console message on {bridge.info}:\n{bridge.log()}")
        assert topic == b"QS_Console"
        message = msgspec.json.decode(payload)
        assert set(message) == {"time", "msg"}
        assert message["time"] == 1700000000.5 and message["msg"].startswith("line ")


def _bridge_subscriptions(services: Services) -> list[str]:
    """The NATS subscriptions of this test's bridge (nats-server's /connz)."""
    url = f"http://127.0.0.1:{services.nats.monitor_port}/connz?subs=1&limit=4096"
    with urllib.request.urlopen(url, timeout=10) as r:
        conns = json.loads(r.read())["connections"] or []
    assert services.client is not None
    status = services.client.subjects.status_event
    for c in conns:
        subs = c.get("subscriptions_list") or []
        if c.get("name") == "qserver-zmq-bridge" and status in subs:
            return list(subs)
    raise AssertionError(f"no bridge connection follows {status}")


async def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.1)


async def test_the_console_is_followed_on_nats_only_while_someone_listens(
    bridge: Bridge, module_services: Services
) -> None:
    """No 0MQ subscriber: the bridge does not take the console events at all (each queue
    change would cost it every console line); a `QS_Console` (or everything) subscriber
    turns them on, and its leaving turns them off."""
    assert module_services.client is not None
    console = module_services.client.subjects.console_event
    await _until(lambda: console not in _bridge_subscriptions(module_services))
    for topic in (b"QS_Console", b""):
        async with subscriber(bridge.info, topic):
            await _until(lambda: console in _bridge_subscriptions(module_services))
        await _until(lambda: console not in _bridge_subscriptions(module_services))
    async with subscriber(bridge.info, b"QS_Info") as sub:
        await sub.next(timeout=30)  # status is relayed to it; the console is not followed
        assert console not in _bridge_subscriptions(module_services)
    assert bridge.proc.alive()


async def test_status_is_published_on_the_info_topic(bridge: Bridge) -> None:
    async with subscriber(bridge.info, b"QS_Info") as sub:
        topic, payload = await sub.next(timeout=30)  # the queue publishes once a second
    message = msgspec.json.decode(payload)
    assert topic == b"QS_Info"
    assert isinstance(message["time"], float)
    assert "manager_state" in message["msg"]["status"]


async def test_msgpack_encoding(module_services: Services) -> None:
    async with (
        running_bridge(module_services, "--encoding", "msgpack") as b,
        zmq_client(b.control, encoding="msgpack") as z,
    ):
        assert "manager_state" in await z.request("status")
        reply = msgspec.msgpack.decode(await z.raw(b"\xc1"))
        assert reply["success"] is False and reply["msg"].startswith("Failed to decode")
        async with subscriber(b.info, b"QS_Info") as sub:
            _, payload = await sub.next()
        assert "status" in msgspec.msgpack.decode(payload)["msg"]


# ----- CurveZMQ -----


@pytest.fixture(scope="module")
def server_keys() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


async def test_curve_with_the_servers_key_works_and_a_wrong_key_is_refused(
    module_services: Services, server_keys: tuple[str, str]
) -> None:
    public, secret = server_keys
    env = {"QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER": secret}
    async with running_bridge(module_services, env=env) as b:
        assert "CurveZMQ on, public key " + public in b.log()
        async with zmq_client(b.control, server_key=public) as z:
            assert "manager_state" in await z.request("status")
        wrong, _ = zmq.curve_keypair()
        async with zmq_client(b.control, server_key=wrong.decode()) as z:
            with pytest.raises(TimeoutError):
                await z.request("status", timeout=3)
        async with zmq_client(b.control) as z:  # no encryption at all
            with pytest.raises(TimeoutError):
                await z.request("status", timeout=3)
        async with zmq_client(b.control, server_key=public) as z:  # still serving
            assert "manager_state" in await z.request("status")


async def test_curve_client_keys_map_to_users_and_access(
    module_services: Services, server_keys: tuple[str, str], tmp_path: Path
) -> None:
    public, secret = server_keys
    alice, alice_secret = zmq.curve_keypair()
    viewer, viewer_secret = zmq.curve_keypair()
    keys = tmp_path / "clients.yaml"
    keys.write_text(
        "clients:\n"
        f"  - {{public_key: '{alice.decode()}', user: alice, user_group: test_user}}\n"
        f"  - {{public_key: '{viewer.decode()}', user: viewer, user_group: primary, "
        "access: observe}\n"
    )
    env = {"QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER": secret}
    async with running_bridge(module_services, "--client-keys", str(keys), env=env) as b:
        async with zmq_client(b.control, server_key=public, client_keys=(alice, alice_secret)) as z:
            item = {"item": plan("count", ["det1"]), "user": "mallory", "user_group": "primary"}
            added = await z.request("queue_item_add", item)
            assert added["success"], added
            assert (added["item"]["user"], added["item"]["user_group"]) == ("alice", "test_user")
            denied = await z.request("manager_stop", {"option": "safe_on"})
            assert not denied["success"] and "does not allow 'manager_stop'" in denied["msg"]
            removed = await z.request("queue_item_remove", {"uid": added["item"]["item_uid"]})
            assert removed["success"], removed
        async with zmq_client(
            b.control, server_key=public, client_keys=(viewer, viewer_secret)
        ) as z:
            assert "manager_state" in await z.request("status")
            refused = await z.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
            assert not refused["success"] and "'observe' access" in refused["msg"]
        # An unlisted key on loopback is a local process: its identity is its own.
        async with zmq_client(b.control, server_key=public) as z:
            added = await z.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
            assert added["item"]["user"] == USER["user"]
            assert (await z.request("queue_item_remove", {"uid": added["item"]["item_uid"]}))[
                "success"
            ]


async def test_the_bridge_waits_for_nats_and_says_so(tmp_path: Path) -> None:
    """Started before NATS is there, it answers every request with the reason."""
    nowhere = f"nats://127.0.0.1:{free_port()}"
    async with bridge_on(nowhere, unique_prefix(), tmp_path) as b, zmq_client(b.control) as z:
        reply = await z.request("status")
    assert reply["success"] is False and "not connected to NATS" in reply["msg"]


async def test_manager_kill_goes_out_and_gets_no_reply_as_the_references(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The reference's manager never answers `manager_kill`. A prefix of this test's own, so
    that no queue service takes it."""
    prefix = unique_prefix()
    client = await Client.connect(nats_server.url, prefix)
    try:
        sub = await client.nc.subscribe(client.subjects.api("manager_kill"))
        await client.nc.flush()
        async with bridge_on(nats_server.url, prefix, tmp_path) as b, zmq_client(b.control) as z:
            with pytest.raises(TimeoutError):
                await z.request("manager_kill", timeout=3)
        msg = await sub.next_msg(timeout=10)
        assert msg.data == b"{}"
    finally:
        await client.close()
