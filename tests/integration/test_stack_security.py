"""The embedded stack is closed by default: no anonymous NATS client gets in, its keys are its
owner's, the client user cannot write what only services write, nor read other users' replies.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from qserver.client import Client
from qserver.connect import NatsAuth
from qserver.localstack import DATA_DIR_ENV
from qserver.protocol.subjects import Subjects
from services.stack.credentials import StackKeys
from services.stack.nats_permissions import roles
from tests.integration.test_stack import StackProcess, Stacks
from tests.integration.test_status_direct import direct_hit

DEADLINE = 30.0


@pytest.fixture
async def stack(stacks: Stacks) -> AsyncIterator[tuple[StackProcess, dict[str, Any]]]:
    proc = stacks.start("--no-kafka")
    info = await proc.wait_info(timeout=60)
    yield proc, info
    proc.proc.send_signal(signal.SIGTERM)
    await proc.wait_exit(30)


def clean_env(data_dir: Path) -> dict[str, str]:
    """A user's shell: no NATS settings at all, only where the stack's data dir is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QSERVER_")}
    return {**env, DATA_DIR_ENV: str(data_dir)}


async def qserver(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qserver.cli", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class Errors:
    """The asynchronous errors NATS sends a connection (permission violations)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def cb(self, e: Exception) -> None:
        self.seen.append(str(e).lower())

    async def wait_for(self, text: str) -> None:
        async with asyncio.timeout(DEADLINE):
            while not any(text.lower() in e for e in self.seen):
                await asyncio.sleep(0.05)


async def connect_as(info: dict[str, Any], role: str, errors: Errors | None = None) -> NATS:
    """A plain nats.py connection with the stack's key of `role`, as the stack's users have."""
    auth = StackKeys(Path(info["data_dir"]) / "nats-keys").auth(role)
    return await nats.connect(
        info["nats_url"],
        allow_reconnect=False,
        error_cb=errors.cb if errors else None,
        **auth.connect_options(),
    )


async def test_anonymous_clients_are_refused_while_qserver_works_without_flags(
    stack: tuple[StackProcess, dict[str, Any]], tmp_path: Path
) -> None:
    _, info = stack
    anonymous = NATS()
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        try:
            await anonymous.connect(info["nats_url"], allow_reconnect=False)
        finally:
            await anonymous.close()  # a refused connection keeps its socket otherwise

    env = clean_env(Path(info["data_dir"]))
    rc, out = await qserver(env, "status")
    assert rc == 0 and '"manager_state": "idle"' in out, out
    rc, out = await qserver(env, "-c", "status")  # the v0.0.1 form
    assert rc == 0 and '"manager_state": "idle"' in out, out
    rc, out = await qserver(env, "queue", "add", "plan", '{"name":"count","args":[["det1"]]}')
    assert rc == 0 and '"success": true' in out, out
    rc, out = await qserver(env, "monitor", "--once")
    assert rc == 0 and "manager_state=idle items_in_queue=1" in out, out
    rc, out = await qserver(env, "doctor")
    assert rc == 0 and out.strip().endswith("all good"), out
    assert "operator.nk" in out  # it says which user it connected as

    # Whoever cannot read the data dir has no key: NATS refuses it.
    stranger = clean_env(tmp_path / "someone-else")
    rc, out = await qserver(stranger, "-a", info["nats_url"], "status")
    assert rc == 2 and "authorization violation" in out, out


async def test_keys_and_server_config_are_readable_by_their_owner_only_and_kept(
    stacks: Stacks,
) -> None:
    first = stacks.start("--no-kafka")
    info = await first.wait_info(timeout=60)
    data = Path(info["data_dir"])
    keys = data / "nats-keys"
    private = [keys / f"{r.name}.nk" for r in roles()]
    private += [data / "nats" / "nats-server.conf", data / "stack.json"]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for d in (keys, data):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    config = (data / "nats" / "nats-server.conf").read_text()
    seed = (keys / "operator.nk").read_text()
    assert seed.startswith("SU") and seed.strip() not in config  # public keys only
    assert info["nats_client"] == {
        "role": "operator",
        "nkey": str(keys / "operator.nk"),
        "inbox_prefix": "_INBOX.operator",
    }
    assert seed not in (data / "stack.json").read_text()

    first.proc.send_signal(signal.SIGTERM)
    assert await first.wait_exit(30) == 0, first.output()
    again = stacks.start("--no-kafka")
    await again.wait_info(timeout=60)
    # The same key opens the restarted stack: clients keep working.
    assert (keys / "operator.nk").read_text() == seed
    nc = await connect_as(info, "operator")
    await nc.close()


async def test_the_client_user_cannot_write_service_subjects_nor_read_other_inboxes(
    stack: tuple[StackProcess, dict[str, Any]],
) -> None:
    _, info = stack
    s = Subjects(info["prefix"])
    worker = await connect_as(info, "worker")
    js = worker.jetstream()
    results_before = (await js.stream_info(s.results_stream)).state.last_seq
    queue_before = (await js.stream_info(s.queue_stream)).state.last_seq

    errors = Errors()
    client = await connect_as(info, "operator", errors)
    try:
        forged = (
            s.results,  # a forged plan outcome
            s.worker_cmd("destroy"),
            s.env_cmd("abort"),
            s.worker_state,
            s.env_state,
            s.queue_log,
            s.history_log,
            "$JS.API.INFO",  # the JetStream API answers any reply subject: none for clients
            "$KV.QS_X.k",
        )
        for subject in forged:
            await client.publish(subject, b'{"item_uid": "x", "record_uid": "forged-run"}')
        others = ("_INBOX.queue.>", "_INBOX.worker.>", "_INBOX.>", f"{s.prefix}.internal.>")
        for subject in others:
            await client.subscribe(subject)
        await client.flush()
        for subject in forged:
            await errors.wait_for(f'permissions violation for publish to "{subject}"')
        for subject in others:
            await errors.wait_for(f'permissions violation for subscription to "{subject}"')
        # Its own inbox works: a request gets its reply.
        reply = await client.request(s.api("status"), b"{}", timeout=10)
        assert b'"manager_state"' in reply.data
        assert (await js.stream_info(s.results_stream)).state.last_seq == results_before
        assert (await js.stream_info(s.queue_stream)).state.last_seq == queue_before
        await status_from_nats_server_for_the_operator_only(info)
    finally:
        await client.close()
        await worker.close()


async def status_from_nats_server_for_the_operator_only(info: dict[str, Any]) -> None:
    """The stack's client user may read the last status from JetStream (its holder holds
    every key); the observer's key may not, and its client asks the queue service (ADR 35)."""
    keys = Path(info["data_dir"]) / "nats-keys"

    async def connect(role: str) -> Client:
        auth = NatsAuth(nkey=str(keys / f"{role}.nk"), inbox_prefix=f"_INBOX.{role}")
        return await Client.connect(info["nats_url"], info["prefix"], timeout=30, auth=auth)

    operator, observer = await connect("operator"), await connect("observer")
    try:
        assert (await direct_hit(operator))["manager_state"] == "idle"
        assert operator.direct_status
        assert (await observer.request("status"))["manager_state"] == "idle"
        assert not observer.direct_status and observer.direct_hits == 0
    finally:
        await operator.close()
        await observer.close()


async def test_a_reply_subject_cannot_aim_a_service_at_a_state_subject(
    stack: tuple[StackProcess, dict[str, Any]],
) -> None:
    """A request names its reply subject: services answer only inboxes (ADR 11)."""
    _, info = stack
    s = Subjects(info["prefix"])
    # Subjects the queue service (worker.*) and the worker service (env.*) may publish to.
    targets = (s.worker_cmd("probe"), s.env_cmd("probe"))
    monitor = await connect_as(info, "queue")  # services may read internal subjects
    arrived: list[str] = []

    async def on_msg(msg: Any) -> None:
        arrived.append(msg.subject)

    for target in targets:
        await monitor.subscribe(target, cb=on_msg)
    await monitor.flush()
    client = await connect_as(info, "operator")
    try:
        for target in targets:
            await client.publish("$SRV.PING", b"", reply=target)
            await client.publish(s.api("status"), b"{}", reply=target)
        # Each service handles one subscription's messages in order: once the same requests
        # with an inbox are answered, the ones above were handled too.
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        await client.publish("$SRV.PING", b"", reply=inbox)
        names: set[str] = set()
        async with asyncio.timeout(DEADLINE):
            while len(names) < 3:  # the queue, history and worker services
                names.add(json.loads((await sub.next_msg(timeout=DEADLINE)).data)["name"])
        reply = await client.request(s.api("status"), b"{}", timeout=10)
        assert b'"manager_state"' in reply.data
        await monitor.flush()  # anything published before the answers above is here now
        assert arrived == []
    finally:
        await client.close()
        await monitor.close()
    queue_log = Path(info["logs_dir"]) / "queue.log"
    assert f"its reply subject '{s.worker_cmd('probe')}' is not an inbox" in queue_log.read_text()
