"""Large failure reports and large replies (ADR 8), against the real services.

A failure report of megabytes is cut where it is made and kept whole in the object store,
so the queue goes on; replies larger than one NATS message (`queue_get` of 50,000 items,
`history_get` of 5,000 records with 100 KB tracebacks) come back whole over NATS (the
CLI, `SyncClient`) and over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import httpx
import msgspec
import nats
import pytest

from qserver import result_texts
from qserver.client import (
    Client,
    EmptyReply,
    IncompleteReply,
    NoAnswer,
    SyncClient,
    fetch_parts,
)
from qserver.protocol.items import HistoryRecord, HistoryResult, QueueItem
from qserver.protocol.reply_parts import PART_HEADER, PARTS_HEADER, SIZE_HEADER, TOKEN_HEADER
from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import PlanResult
from services.stack.natsserver import NatsServer
from services.worker.results import last_result, publish_result
from tests.conftest import USER, Services, report, unique_prefix
from tests.integration.gateway_support import gateway_for, running_gateway
from tests.integration.nats_roles_support import RoleServices, new_passwords, write_accounts

ITEM = {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 10}}
QUEUE_ITEMS = 50_000
HISTORY_RECORDS = 5_000
TRACEBACK_CHARS = 100_000
BIG_REPORT = 2_000_000  # characters of the failing plan's message: > 1 MiB


async def qs_cli(svc: Services, *args: str, timeout: float = 60) -> Any:
    """`qserver <args>` as a subprocess; its JSON output, decoded."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "qserver.cli", "-a", svc.nats.url, "--prefix", svc.prefix),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, (proc.returncode, err.decode()[-2000:])
    return json.loads(out)


def sync_request(svc: Services, method: str, params: dict[str, Any] | None = None) -> Any:
    c = SyncClient(svc.nats.url, svc.prefix, timeout=30)
    try:
        return c.request(method, params)
    finally:
        c.close()


async def over_http(svc: Services, path: str) -> tuple[Any, float]:
    """The JSON body of `GET path` from a gateway of its own, and the GET's time."""
    async with gateway_for(svc, "--no-auth", "--timeout", "30") as gw, httpx.AsyncClient() as http:
        t0 = time.perf_counter()
        r = await http.get(f"{gw.url}{path}", timeout=60)
        took = time.perf_counter() - t0
        assert r.status_code == 200, r.text[:500]
        assert r.content, "an empty body"
        return r.json(), took


async def other_paths(svc: Services, method: str, command: str, route: str) -> list[Any]:
    """The reply over the CLI, `SyncClient` and HTTP, each timed (the CLI with its start)."""
    t0 = time.perf_counter()
    by_cli = await qs_cli(svc, *command.split())
    t1 = time.perf_counter()
    by_sync = await asyncio.to_thread(sync_request, svc, method)
    t2 = time.perf_counter()
    by_http, http_s = await over_http(svc, f"/api/{route}")
    report(
        f"  {method} whole: CLI {t1 - t0:.2f} s (process start to JSON printed), "
        f"SyncClient {t2 - t1:.2f} s (with connecting), HTTP GET {http_s:.2f} s"
    )
    return [by_cli, by_sync, by_http]


# ----- a failure report over 1 MiB -----


async def test_a_failure_report_over_1_mib_does_not_jam_the_queue(
    client: Client, services: Services
) -> None:
    r = await client.request("environment_open", timeout=30)
    assert r["success"], r
    await client.wait_for(lambda st: st["worker_environment_exists"], timeout=30)
    big = {"item_type": "plan", "name": "sim_fail_large", "kwargs": {"size": BIG_REPORT}}
    r = await client.request("queue_item_add_batch", {"items": [big, ITEM], **USER})
    assert r["success"], r
    failed_uid, next_uid = (it["item_uid"] for it in r["items"])
    r = await client.request("queue_mode_set", {"mode": {"ignore_failures": True}})
    assert r["success"], r
    assert (await client.request("queue_start"))["success"]
    # The failure is recorded and the next item runs: the queue is not jammed.
    st = await client.wait_for(
        lambda st: st["items_in_history"] == 2 and st["manager_state"] == "idle", timeout=60
    )
    assert st["items_in_queue"] == 0
    items = (await client.request("history_get"))["items"]
    assert [(it["item_uid"], it["result"]["exit_status"]) for it in items] == [
        (failed_uid, "failed"),
        (next_uid, "completed"),
    ]
    cut = items[0]["result"]
    assert cut["truncated"]["msg"] > BIG_REPORT
    assert cut["truncated"]["traceback"] > BIG_REPORT
    assert (
        f"characters cut here; the whole text: `qserver history result {failed_uid}`"
        in (cut["traceback"])
    )
    assert cut["traceback"].rstrip().endswith("x" * 100)  # the tail, with the exception
    assert len(msgspec.json.encode(items[0])) < 20_000
    assert "truncated" not in items[1]["result"]
    # The whole text, over NATS (the reply takes several messages) and over HTTP.
    whole = await client.request("history_result_get", {"item_uid": failed_uid})
    assert whole["success"] and whole["whole"], whole["msg"]
    tb, msg = whole["result"]["traceback"], whole["result"]["msg"]
    assert (len(msg), len(tb)) == (cut["truncated"]["msg"], cut["truncated"]["traceback"])
    assert tb.startswith("Traceback") and tb.rstrip().endswith("x" * (BIG_REPORT - 21))
    assert msg.startswith("Plan failed: large failure report")
    # What history holds is exactly what the shared cutting makes of the whole report.
    stored, _ = result_texts.bound(msgspec.convert(whole["result"], HistoryResult), failed_uid)
    assert (stored.msg, stored.traceback) == (cut["msg"], cut["traceback"])
    assert (await client.request("history_result_get", {"item_uid": next_uid}))["whole"]
    assert await qs_cli(services, "history", "result", failed_uid) == whole


async def test_an_uncut_oversize_result_is_cut_by_the_queue_service(
    client: Client,
) -> None:
    """A result from a worker that does not cut (an older one) still cannot jam the queue."""
    long = {"item_type": "plan", "name": "sleep", "args": [60]}
    r = await client.request("environment_open", timeout=30)
    assert r["success"], r
    await client.wait_for(lambda st: st["worker_environment_exists"], timeout=30)
    r = await client.request("queue_item_execute", {"item": long, **USER})
    assert r["success"], r
    uid = r["item"]["item_uid"]
    await client.wait_for(lambda st: st["running_item_uid"] == uid, timeout=30)
    # The result of the running item as an older worker would publish it: texts of 1 MB,
    # in one message just below 1 MiB.
    record_uid = str(uuid.uuid4())
    text = "y" * 500_000
    forged = {
        "record_uid": record_uid,
        "item_uid": uid,
        "env_uid": "older-worker",
        "result": {"exit_status": "failed", "msg": text, "traceback": text},
    }
    js = client.nc.jetstream()
    await js.publish(
        client.subjects.results,
        msgspec.json.encode(forged),
        headers={"Nats-Msg-Id": record_uid},
    )
    await client.wait_for(lambda st: st["items_in_history"] == 1, timeout=30)
    (item,) = (await client.request("history_get"))["items"]
    assert item["item_uid"] == uid
    assert item["result"]["truncated"] == {"msg": 500_000, "traceback": 500_000}
    whole = await client.request("history_result_get", {"item_uid": uid})
    assert whole["result"]["msg"] == text and whole["result"]["traceback"] == text
    assert (await client.request("environment_destroy"))["success"]


async def test_a_result_refused_for_its_size_is_stored_bare_not_retried_forever(
    nats_server: NatsServer,
) -> None:
    """The worker's last resort: a result a stream refuses as too large (here a stream
    limited to 2,000 bytes, and 200 run uids) is stored without its texts and run list."""
    subjects = Subjects(unique_prefix())
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            name=subjects.results_stream, subjects=[subjects.results], max_msg_size=2000
        )
        result = PlanResult(
            record_uid=str(uuid.uuid4()),
            item_uid="item-1",
            env_uid="env-1",
            result=HistoryResult(
                exit_status="failed",
                run_uids=[str(uuid.uuid4()) for _ in range(200)],
                time_start=1.0,
                time_stop=2.0,
                msg="Plan failed: boom",
            ),
        )
        await asyncio.wait_for(publish_result(js, subjects, result), 30)
        stored = await last_result(js, subjects)
        assert stored is not None and stored.record_uid == result.record_uid
        assert stored.result.exit_status == "failed"
        assert (stored.result.time_start, stored.result.time_stop) == (1.0, 2.0)
        assert stored.result.msg.startswith("The outcome report was too large to store")
        assert stored.result.run_uids == []
    finally:
        await nc.close()


async def test_an_empty_reply_is_an_error_and_http_never_answers_200_with_no_body(
    nats_server: NatsServer, tmp_path: Any
) -> None:
    """What nats.micro sends when a handler raises (headers, no body): an error everywhere."""
    prefix = unique_prefix()
    nc = await nats.connect(nats_server.url)

    async def broken(msg: Any) -> None:
        headers = {"Nats-Service-Error": "boom", "Nats-Service-Error-Code": "500"}
        await nc.publish(msg.reply, b"", headers=headers)

    await nc.subscribe(f"{prefix}.api.queue_get", cb=broken)
    client = Client(nc, prefix, timeout=5)
    try:
        with pytest.raises(EmptyReply, match=r"'queue_get' with an empty reply \(boom\)"):
            await client.request("queue_get")
        async with (
            running_gateway(nats_server.url, prefix, tmp_path, "--no-auth") as gw,
            httpx.AsyncClient() as http,
        ):
            r = await http.get(f"{gw.url}/api/queue/get", timeout=30)
        assert r.status_code == 503
        assert "empty reply (boom)" in r.json()["detail"]
    finally:
        await nc.close()


# ----- queue_get of 50,000 items -----


async def fill_queue(client: Client, n: int, batch: int = 500) -> None:
    for start in range(0, n, batch):
        items = [ITEM] * min(batch, n - start)
        r = await client.request("queue_item_add_batch", {"items": items, **USER}, timeout=60)
        assert r["success"], r["msg"]


@pytest.mark.timeout(240)
async def test_queue_get_of_50000_items_is_whole_over_nats_cli_and_http(
    client: Client, services: Services
) -> None:
    t0 = time.perf_counter()
    await fill_queue(client, QUEUE_ITEMS)
    filled = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = await client.request_raw("queue_get", b"{}", timeout=30)
    fetched = time.perf_counter() - t0
    report(
        f"queue_get of {QUEUE_ITEMS:,} items: {len(raw):,} bytes in {fetched * 1e3:.0f} ms "
        f"(queue filled in {filled:.1f} s)"
    )
    assert len(raw) > 5 * 2**20  # several NATS messages
    reply = msgspec.json.decode(raw)
    assert reply["success"]
    uids = [it["item_uid"] for it in reply["items"]]
    assert len(uids) == len(set(uids)) == QUEUE_ITEMS
    assert all(it["name"] == "count" and it["kwargs"] == {"num": 10} for it in reply["items"])
    st = await client.request("status")
    assert reply["plan_queue_uid"] == st["plan_queue_uid"]

    by_cli, by_sync, by_http = await other_paths(services, "queue_get", "queue get", "queue/get")
    for other in (by_cli, by_sync, by_http):
        assert other == reply


async def test_a_client_that_does_not_fetch_parts_gets_a_clear_message(
    client: Client,
) -> None:
    await fill_queue(client, 8_000)  # about 1.4 MB
    small = await client.nc.request(client.subjects.api("status"), b"", timeout=10)
    # Small replies are one message, as before (its only header: the status number, ADR 29).
    assert PARTS_HEADER not in (small.headers or {}) and TOKEN_HEADER not in (small.headers or {})
    assert msgspec.json.decode(small.data)["items_in_queue"] == 8_000
    big = await client.nc.request(client.subjects.api("queue_get"), b"", timeout=10)
    assert big.headers is not None and int(big.headers[PARTS_HEADER]) >= 2
    reply = msgspec.json.decode(big.data)
    assert reply["success"] is False
    assert "more than one NATS message holds" in reply["msg"]
    assert TOKEN_HEADER in reply["msg"]


async def test_a_part_that_cannot_be_had_is_a_clear_error_never_an_empty_reply(
    client: Client,
) -> None:
    await fill_queue(client, 8_000)
    subject = client.subjects.api("queue_get")
    big = await client.nc.request(subject, b"", timeout=10)
    announced = dict(big.headers)
    holder = announced[TOKEN_HEADER].split("-")[0]

    async def ask(headers: dict[str, str]) -> Any:
        return await client.nc.request(subject, b"", timeout=2, headers=headers)

    # A reply that is no longer held (expired, or fetched already).
    gone = {**announced, TOKEN_HEADER: f"{holder}-{uuid.uuid4().hex}"}
    with pytest.raises(IncompleteReply, match="Part 0 of the reply to 'queue_get' failed: The"):
        await fetch_parts("queue_get", gone, ask)
    # A part that the reply does not have.
    r = await ask({TOKEN_HEADER: announced[TOKEN_HEADER], PART_HEADER: "999"})
    assert "has parts 0 to" in msgspec.json.decode(r.data)["msg"]
    # A reply held by a process that is gone: no one answers, the client says which part.
    orphan = {**announced, TOKEN_HEADER: f"gone{holder[4:]}-{uuid.uuid4().hex}"}
    with pytest.raises(NoAnswer, match="No part 0 of the reply to 'queue_get' within 2 s"):
        await client._ask_part("queue_get", subject, 2, {**orphan, PART_HEADER: "0"})
    # A wrongly announced reply.
    with pytest.raises(IncompleteReply, match="announced its parts wrongly"):
        await fetch_parts("queue_get", {TOKEN_HEADER: "x", SIZE_HEADER: "many"}, ask)
    # The held reply itself is still whole.
    whole = await fetch_parts("queue_get", announced, ask)
    assert len(msgspec.json.decode(whole)["items"]) == 8_000


async def test_large_replies_need_no_permission_beyond_the_request(
    tmp_path: Any,
) -> None:
    """A read-only NATS user of deploy/nats/accounts.conf fetches a large reply whole."""
    prefix = unique_prefix()
    passwords = new_passwords(prefix)
    conf = write_accounts(tmp_path / "accounts.conf", prefix, passwords)
    server = NatsServer(tmp_path / "nats", config_file=conf).start()
    svc = RoleServices(server, tmp_path, prefix=prefix)
    svc.passwords = passwords
    try:
        svc.start("queue", "history")
        await svc.wait_ready()
        operator = await svc.connect_as("operator")
        observer = await svc.connect_as("observer")
        try:
            await fill_queue(operator, 8_000)
            reply = await observer.request("queue_get")
            assert len(reply["items"]) == 8_000
            assert reply == await operator.request("queue_get")
        finally:
            await operator.close()
            await observer.close()
    finally:
        svc.stop_all()
        server.stop()


# ----- history_get of 5,000 records with 100 KB tracebacks -----


def failed_record(n: int) -> tuple[HistoryRecord, HistoryResult]:
    """A history record as the services store it for a plan that failed with a 100 KB
    traceback: the result cut by the shared `result_texts.bound`, the item without its
    properties. Returns the record and the whole result."""
    item_uid = str(uuid.uuid4())
    item = QueueItem(
        item_type="plan",
        name="sim_fail",
        kwargs={"msg": f"failure {n}"},
        item_uid=item_uid,
        user=USER["user"],
        user_group=USER["user_group"],
    )
    head = "Traceback (most recent call last):\n"
    frame = f'  File "/beamline/plans.py", line {n}, in sim_fail\n    raise RuntimeError(msg)\n'
    tail = f"RuntimeError: failure {n}\n"
    frames = (TRACEBACK_CHARS - len(head) - len(tail)) // len(frame)
    tb = head + frame * frames + tail
    tb = head + " " * (TRACEBACK_CHARS - len(tb)) + tb[len(head) :]  # exactly 100,000
    whole = HistoryResult(
        exit_status="failed",
        time_start=1.7e9 + n,
        time_stop=1.7e9 + n + 1,
        msg=f"Plan failed: failure {n}",
        traceback=tb,
    )
    result, _ = result_texts.bound(whole, item_uid)
    record_item = msgspec.to_builtins(item)
    record_item.pop("properties", None)
    return HistoryRecord(record_uid=str(uuid.uuid4()), item=record_item, result=result), whole


async def seed_history(client: Client, records: list[HistoryRecord]) -> None:
    js = client.nc.jetstream()
    for start in range(0, len(records), 500):
        for rec in records[start : start + 500]:
            await js.publish_async(
                client.subjects.history_log,
                msgspec.json.encode(rec),
                headers={"Nats-Msg-Id": rec.record_uid},
            )
        await js.publish_async_completed()


@pytest.mark.timeout(240)
async def test_history_get_of_5000_records_with_100_kb_tracebacks_is_whole_everywhere(
    client: Client, services: Services
) -> None:
    made = [failed_record(n) for n in range(HISTORY_RECORDS)]
    records = [rec for rec, _ in made]
    assert all(rec.result.truncated == {"traceback": TRACEBACK_CHARS} for rec in records)
    last, last_whole = made[-1]
    js = client.nc.jetstream()
    assert last_whole.traceback != last.result.traceback
    texts = result_texts.bound(last_whole, str(last.item["item_uid"]))[1]
    assert texts is not None
    assert await result_texts.keep(js, client.subjects, last.record_uid, texts)
    await seed_history(client, records)
    await client.wait_for(lambda st: st["items_in_history"] == HISTORY_RECORDS, timeout=60)

    expected = [{**rec.item, "result": msgspec.to_builtins(rec.result)} for rec in records]
    t0 = time.perf_counter()
    raw = await client.request_raw("history_get", b"{}", timeout=30)
    fetched = time.perf_counter() - t0
    report(
        f"history_get of {HISTORY_RECORDS:,} records with 100 KB tracebacks: {len(raw):,} bytes "
        f"in {fetched * 1e3:.0f} ms"
    )
    reply = msgspec.json.decode(raw)
    assert reply["success"] and len(reply["items"]) == HISTORY_RECORDS
    assert reply["items"] == expected

    by_cli, by_sync, by_http = await other_paths(
        services, "history_get", "history get", "history/get"
    )
    for other in (by_cli, by_sync, by_http):
        assert other == reply

    # The whole traceback of a record, however its history entry was cut.
    whole = await client.request("history_result_get", {"item_uid": last.item["item_uid"]})
    assert whole["whole"] and whole["result"]["traceback"] == last_whole.traceback
    # A record whose whole text was not kept says so instead of failing.
    first = records[0]
    r = await client.request("history_result_get", {"item_uid": first.item["item_uid"]})
    assert r["success"] and not r["whole"] and "not kept" in r["msg"]
    assert r["result"]["traceback"] == first.result.traceback
    # Clearing the history drops the kept texts too.
    assert (await client.request("history_clear"))["success"]
    assert await result_texts.load(js, client.subjects, last.record_uid) is None
