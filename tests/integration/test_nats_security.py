"""NATS users and permissions: each service and role connects as itself and gets only its subjects.

The server runs `services.stack.nats_permissions.render_accounts` (what deploy/nats/accounts.conf
holds) with passwords generated here.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest

from qserver.client import AccessDenied, Client
from qserver.connect import NatsAuth
from qserver.protocol.subjects import Subjects
from services.stack.nats_permissions import roles
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services, plan, unique_prefix
from tests.integration.gateway_support import gateway_for
from tests.integration.nats_roles_support import RoleServices, new_passwords, write_accounts

PREFIX = unique_prefix()
PASSWORDS = new_passwords(PREFIX)


def auth(role: str, password: str | None = None) -> NatsAuth:
    return NatsAuth(user=role, password=password or PASSWORDS[role])


@pytest.fixture(scope="module")
def secure_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    d = tmp_path_factory.mktemp("secure-nats")
    conf = write_accounts(d / "accounts.conf", PREFIX, PASSWORDS)
    server = NatsServer(d, config_file=conf).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def svc(
    secure_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    services = RoleServices(secure_nats, tmp_path_factory.mktemp("logs"), prefix=PREFIX)
    services.passwords = PASSWORDS
    services.start()
    try:
        await services.wait_ready()
        services.client = await services.connect_as("operator")
        yield services
    finally:
        if services.client is not None:
            await services.client.close()
        services.stop_all()


@pytest.fixture
async def observer(svc: Services) -> AsyncIterator[Client]:
    c = await Client.connect(svc.nats.url, PREFIX, timeout=5.0, auth=auth("observer"))
    yield c
    await c.close()


@pytest.fixture
async def operator(svc: Services) -> AsyncIterator[Client]:
    c = await Client.connect(svc.nats.url, PREFIX, timeout=5.0, auth=auth("operator"))
    yield c
    await c.close()


async def test_observer_reads_status_queue_and_history(observer: Client) -> None:
    assert (await observer.request("status"))["manager_state"] == "idle"
    assert (await observer.request("queue_get"))["success"]
    assert (await observer.request("history_get"))["success"]
    assert (await observer.request("plans_allowed", {"user_group": "primary"}))["success"]


async def test_people_ask_the_queue_service_for_status_not_jetstream(
    observer: Client, operator: Client
) -> None:
    """A facility's users may not use the JetStream API (its answers go to any subject, into
    any stream, ADR 35): a client tries the direct get once, is refused at once, and asks
    the queue service from then on."""
    for c in (observer, operator):
        assert c.direct_status
        assert (await c.request("status"))["manager_state"] == "idle"
        assert not c.direct_status and c.direct_hits == 0  # refused, not timed out
        assert (await c.request("status"))["manager_state"] == "idle"


@pytest.mark.parametrize(
    ("method", "params"),
    [("queue_item_add", {"item": plan("count", ["det1"]), **USER}), ("queue_start", {})],
)
async def test_observer_control_request_is_denied_at_once_naming_the_subject(
    observer: Client, method: str, params: dict[str, object]
) -> None:
    started = time.monotonic()
    with pytest.raises(AccessDenied) as e:
        await observer.request(method, params)
    assert time.monotonic() - started < 2.0  # not the 5 s request timeout
    assert "Permission denied" in str(e.value)
    # Identity methods go to the observer's own identity subject (ADR 24), others to api.
    assert f"{PREFIX}." in str(e.value) and f".api.{method}'" in str(e.value)
    # The connection stays usable after the refusal.
    assert "manager_state" in await observer.request("status")


async def test_operator_changes_the_queue_and_the_observer_sees_it(
    operator: Client, observer: Client
) -> None:
    r = await operator.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    assert r["success"], r
    uid = r["item"]["item_uid"]
    items = (await observer.request("queue_get"))["items"]
    assert uid in [it["item_uid"] for it in items]
    assert (await operator.request("queue_item_remove", {"uid": uid}))["success"]


async def test_observer_receives_status_events(observer: Client) -> None:
    async def first() -> dict[str, object]:
        async for ev in observer.status_events():
            return ev
        raise AssertionError("no event")

    ev = await asyncio.wait_for(first(), 5.0)
    assert "manager_state" in ev


async def test_wrong_password_is_refused_with_a_clear_error(svc: Services) -> None:
    with pytest.raises(AccessDenied) as e:
        await Client.connect(svc.nats.url, PREFIX, auth=auth("operator", "not-the-password"))
    msg = str(e.value)
    assert "authorization violation" in msg
    assert "user 'operator'" in msg
    assert PASSWORDS["operator"] not in msg


async def test_services_run_a_plan_with_their_own_permissions(operator: Client) -> None:
    """Worker and environment reach JetStream, KV, object store and events as `worker`."""
    assert (await operator.request("environment_open", timeout=30))["success"]
    await operator.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 30
    )
    r = await operator.request("queue_item_add", {"item": plan("count", ["det1"]), **USER})
    assert r["success"], r
    before = len((await operator.request("history_get"))["items"])
    assert (await operator.request("queue_start"))["success"]
    await operator.wait_for(lambda st: st["items_in_history"] > before, 30)
    items = (await operator.request("history_get"))["items"]
    assert items[-1]["result"]["exit_status"] == "completed", items[-1]
    assert items[-1]["result"]["msg"] == ""  # its documents went into the document stream
    assert (await operator.request("environment_close"))["success"]
    await operator.wait_for(lambda st: not st["worker_environment_exists"], 30)


def cli(url: str, env: dict[str, str], *args: str) -> list[str]:
    return [sys.executable, "-m", "qserver.cli", "-a", url, "--prefix", PREFIX, *args]


async def run_cli(url: str, env: dict[str, str], *args: str) -> tuple[int, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QSERVER_NATS_")}
    proc = await asyncio.create_subprocess_exec(
        *cli(url, env, *args),
        env={**full_env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def test_cli_takes_credentials_from_env_and_flags(svc: Services) -> None:
    url = svc.nats.url
    pw = {"QSERVER_NATS_PASSWORD": PASSWORDS["observer"]}
    rc, out = await run_cli(url, {**pw, "QSERVER_NATS_USER": "observer"}, "status")
    assert rc == 0, out
    rc, out = await run_cli(url, pw, "--nats-user", "observer", "queue", "start")
    assert rc == 2, out
    assert f"may not publish to '{PREFIX}.api.queue_start'" in out
    rc, out = await run_cli(url, {"QSERVER_NATS_USER": "observer"}, "status")
    assert rc == 2, out
    assert "authorization violation" in out


def test_the_config_names_no_user_twice() -> None:
    names = [r.name for r in roles(PREFIX)]
    assert len(names) == len(set(names)) == len(PASSWORDS)


async def test_a_missing_credentials_file_is_a_clear_config_error(tmp_path: Path) -> None:
    rc, out = await run_cli(
        "nats://127.0.0.1:1", {"QSERVER_NATS_CREDS": str(tmp_path / "none.creds")}, "status"
    )
    assert rc == 1, out
    assert "QSERVER_NATS_CREDS: no such file" in out


async def test_observer_subscribing_to_internal_subjects_is_denied_not_silent(
    observer: Client,
) -> None:
    async def first() -> dict[str, object]:
        async for ev in observer.events(f"{PREFIX}.internal.>"):
            return ev
        raise AssertionError("the subscription ended")

    with pytest.raises(AccessDenied, match="may not subscribe to"):
        await asyncio.wait_for(first(), 3.0)
    assert "manager_state" in await observer.request("status")


async def test_gateway_serves_http_as_the_gateway_user(svc: RoleServices) -> None:
    env = svc.role_env("gateway")
    async with (
        gateway_for(svc, "--no-auth", env=env) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as http,
    ):
        status = await http.get("/api/status")
        assert status.status_code == 200, gw.log()
        r = await http.post("/api/queue/item/add", json={"item": plan("count", ["det1"])})
        assert r.json()["success"], r.text
        uid = r.json()["item"]["item_uid"]
        r = await http.post("/api/queue/item/remove", json={"uid": uid})
        assert r.json()["success"], r.text
        assert "permissions violation" not in gw.log().lower()


async def test_gateway_replays_the_open_run_and_people_get_progress_live_only(
    svc: RoleServices, operator: Client, observer: Client
) -> None:
    """With the production permissions: the gateway's user reads the document and progress
    streams (ADR 25); an observer, who has no JetStream API, gets the status's progress."""
    import json

    from websockets.asyncio.client import connect

    assert (await operator.request("environment_open", timeout=30))["success"]
    await operator.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 60
    )
    async with gateway_for(svc, "--no-auth", env=svc.role_env("gateway")) as gw:
        item = plan("count", ["det1"], num=8, delay=0.5)
        assert (await operator.request("queue_item_add", {"item": item, **USER}))["success"]
        assert (await operator.request("queue_start"))["success"]
        st = await operator.wait_for(lambda st: (st.get("progress") or {}).get("point", 0) >= 2, 60)
        run_uid = st["progress"]["run_uid"]
        ws_url = gw.url.replace("http://", "ws://")
        docs: list[dict[str, object]] = []
        async with (
            connect(ws_url + "/api/progress/ws") as progress,
            connect(ws_url + "/api/documents/ws?run=current") as documents,
        ):
            assert json.loads(await asyncio.wait_for(progress.recv(), 30))["msg"]["run_uid"] == (
                run_uid
            )
            feed = observer.progress_feed()
            first = await asyncio.wait_for(anext(feed), 30)
            assert first["run_uid"] == run_uid and first["point"] >= 2
            await feed.aclose()
            while not docs or docs[-1]["name"] != "stop":
                docs.append(json.loads(await asyncio.wait_for(documents.recv(), 30))["msg"])
        assert docs[0]["name"] == "start" and len([d for d in docs if d["name"] == "event"]) == 8
        assert "permissions violation" not in gw.log().lower(), gw.log()
    await operator.wait_for(lambda st: st["manager_state"] == "idle", 60)
    assert (await operator.request("environment_close"))["success"]
    await operator.wait_for(lambda st: not st["worker_environment_exists"], 30)


async def test_each_user_reads_replies_only_on_its_own_inboxes(
    svc: Services, observer: Client
) -> None:
    """Inboxes are `_INBOX.<user>.`: nobody reads another user's replies (ADR 11)."""
    assert observer.nc.new_inbox().startswith("_INBOX.observer.")
    for subject in ("_INBOX.operator.>", "_INBOX.>", "_INBOX.queue.abc"):

        async def first(subject: str = subject) -> dict[str, object]:
            async for ev in observer.events(subject):
                return ev
            raise AssertionError("the subscription ended")

        with pytest.raises(AccessDenied, match=f"may not subscribe to '{subject.lower()}'"):
            await asyncio.wait_for(first(), 10.0)
    assert "manager_state" in await observer.request("status")


@pytest.mark.parametrize("role", ["queue", "history", "gateway", "operator", "observer"])
async def test_only_the_worker_side_writes_results_and_worker_events(
    svc: Services, role: str
) -> None:
    """A forged plan outcome or worker state is refused for every user but the worker's."""
    s = Subjects(PREFIX)
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    nc = await nats.connect(
        svc.nats.url, allow_reconnect=False, error_cb=on_error, **auth(role).connect_options()
    )
    try:
        forged = (s.results, s.worker_state, s.env_state)
        for subject in forged:
            await nc.publish(subject, b'{"item_uid": "x", "record_uid": "forged-run"}')
        await nc.flush()
        async with asyncio.timeout(30):
            while not all(
                any(f'publish to "{subject}"' in e for e in errors) for subject in forged
            ):
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def test_a_jetstream_answer_aimed_at_the_workers_commands_is_dropped(
    svc: RoleServices, operator: Client
) -> None:
    """JetStream answers at whatever reply subject a request names, past every permission:
    the gateway (allowed a stream's info, ADR 25) aims it at `worker.destroy`. The worker
    drops it and the environment stays (before, the worker destroyed it)."""
    s = Subjects(PREFIX)
    r = await operator.request("environment_open", timeout=30)
    assert r["success"], r
    await operator.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 30
    )
    log = svc.log_dir / "worker.log"
    seen = log.read_text(errors="replace").count("dropping a message JetStream sent")
    nc = await nats.connect(
        svc.nats.url, allow_reconnect=False, **auth("gateway").connect_options()
    )
    try:
        await nc.publish(
            f"$JS.API.STREAM.INFO.{s.progress_stream}", b"", reply=s.worker_cmd("destroy")
        )
        await nc.flush()
        deadline = time.monotonic() + 30
        while log.read_text(errors="replace").count("dropping a message JetStream sent") == seen:
            assert time.monotonic() < deadline, "the worker did not say it dropped the answer"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
    status = await operator.request("status")
    assert status["worker_environment_exists"], status
    assert (await operator.request("environment_close"))["success"]
    await operator.wait_for(lambda st: not st["worker_environment_exists"], 30)


async def test_jetstream_answers_aimed_into_the_queue_and_history_logs_are_skipped(
    svc: RoleServices, operator: Client
) -> None:
    """The same answers aimed at a stream's subject are stored in it, as if a service had
    written them. The queue service skips them when it reads its log: a write is refused
    once (the log's last sequence moved), the next is stored, and after a restart the queue
    is as it was (before, the queue service failed at every start on the foreign message)."""
    s = Subjects(PREFIX)
    item = {"item": plan("count", ["det1"]), **USER}
    first = await operator.request("queue_item_add", item)
    assert first["success"], first
    nc = await nats.connect(
        svc.nats.url, allow_reconnect=False, **auth("gateway").connect_options()
    )
    try:
        for subject in (s.queue_log, s.history_log):
            await nc.publish(f"$JS.API.STREAM.INFO.{s.progress_stream}", b"", reply=subject)
        await nc.flush()
    finally:
        await nc.close()
    uids = [first["item"]["item_uid"]]
    for _ in range(2):  # the first may be refused: the log moved under the leader
        r = await operator.request("queue_item_add", item)
        if r["success"]:
            uids.append(r["item"]["item_uid"])
            break
        assert "changed by another writer" in r["msg"], r
    assert len(uids) == 2, "no write was stored after the foreign message"

    log = svc.log_dir / "queue.log"
    skipped = log.read_text(errors="replace").count("JetStream wrote it on someone's behalf")
    for name in ("queue", "history"):
        svc.procs[name].stop()
        svc.procs[name].start()
    await svc.wait_ready()
    assert log.read_text(errors="replace").count("JetStream wrote it") > skipped
    queue = (await operator.request("queue_get"))["items"]
    assert [it["item_uid"] for it in queue][-2:] == uids
    assert (await operator.request("history_get"))["success"]
    for uid in uids:
        assert (await operator.request("queue_item_remove", {"uid": uid}))["success"]
