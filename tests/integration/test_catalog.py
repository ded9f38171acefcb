"""Runs saved into a Tiled catalog from the document stream by the history service (ADR 10),
exported to Kafka by the worker service, and linked to history.

Real components: nats-server, the Tansu broker, a Tiled server on an SQLite catalog, the
queue, history and worker services as processes, bluesky-kafka's RemoteDispatcher and the
standard Tiled client (`CatalogOfBlueskyRuns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qserver.client import Client
from services.stack.kafka_broker import KafkaBroker
from services.stack.natsserver import NatsServer
from services.stack.tiled_server import TiledServer
from tests.conftest import USER, Services, new_topic, running_services
from tests.integration.test_kafka import remote_dispatcher

T = 30.0


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TiledServer]:
    server = TiledServer(tmp_path_factory.mktemp("tiled")).start()
    yield server
    server.stop()


def catalog_env(broker: KafkaBroker, tiled: TiledServer, topic: str) -> dict[str, str]:
    return {
        "QSERVER_KAFKA_BOOTSTRAP": broker.bootstrap,
        "QSERVER_KAFKA_TOPIC": topic,
        "QSERVER_TILED_URL": tiled.url,
        "QSERVER_TILED_API_KEY": tiled.api_key,
    }


@contextlib.asynccontextmanager
async def stack(
    nats: NatsServer,
    broker: KafkaBroker,
    tiled: TiledServer,
    log_dir: Path,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Services]:
    topic = new_topic()
    broker.create_topic(topic, partitions=1)
    env = {**catalog_env(broker, tiled, topic), **(env or {})}
    async with running_services(nats, log_dir, env=env) as svc:
        svc.topic = topic  # type: ignore[attr-defined]
        yield svc


@contextlib.contextmanager
def catalog(tiled: TiledServer) -> Iterator[Any]:
    """The standard client's view of the catalog; its connections closed afterwards."""
    from tiled.client import from_uri

    root = from_uri(tiled.url, api_key=tiled.api_key)
    try:
        yield root["raw"]
    finally:
        root.context.close()


class SavedRuns:
    """`run_saved` events, collected as they come."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.runs: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SavedRuns:
        sub = await self.client.nc.subscribe(self.client.subjects.run_saved_event)

        async def collect() -> None:
            async for msg in sub.messages:
                self.runs.append(json.loads(msg.data))

        self._task = asyncio.create_task(collect())
        self._sub = sub
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def wait(self, uids: list[str], timeout: float = T) -> list[dict[str, Any]]:
        await until(lambda: set(uids) <= {r["run_uid"] for r in self.runs}, "runs saved", timeout)
        return [r for r in self.runs if r["run_uid"] in uids]


async def until(cond: Callable[[], bool], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def open_env(client: Client) -> None:
    r = await client.request("environment_open", timeout=30)
    assert r["success"], r
    await client.wait_for(
        lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", timeout=30
    )


async def run_items(client: Client, *items: dict[str, Any]) -> list[dict[str, Any]]:
    """Add the items, run the queue, return their history items (in the order given)."""
    uids = []
    for item in items:
        r = await client.request("queue_item_add", {"item": item, **USER})
        assert r["success"], r
        uids.append(r["item"]["item_uid"])
    r = await client.request("queue_start")
    assert r["success"], r
    return await in_history(client, uids)


async def in_history(client: Client, uids: list[str]) -> list[dict[str, Any]]:
    """The history items of `uids`, once they are all in the history."""
    deadline = time.monotonic() + T
    while True:
        hist = (await client.request("history_get"))["items"]
        by_uid = {h["item_uid"]: h for h in hist}
        if set(uids) <= set(by_uid):
            break
        assert time.monotonic() < deadline, "timed out waiting for the items in the history"
        await asyncio.sleep(0.1)
    return [by_uid[u] for u in uids]


async def cli(svc: Services, *args: str) -> dict[str, Any]:
    """`qserver --format json ...` as a user runs it; its printed reply."""
    from tests.integration.test_cli import ok

    return await ok(svc, *args)


def plan(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"item_type": "plan", "name": name, "args": list(args), "kwargs": kwargs}


async def test_count_and_scan_reach_kafka_consumers_and_the_catalog_linked_to_history(
    nats_server: NatsServer, broker: KafkaBroker, tiled: TiledServer, tmp_path: Path
) -> None:
    async with stack(nats_server, broker, tiled, tmp_path) as svc:
        client = svc.client
        assert client is not None
        topic: str = svc.topic  # type: ignore[attr-defined]
        async with (
            remote_dispatcher(broker.bootstrap, topic) as received,
            SavedRuns(client) as saved,
        ):
            await open_env(client)
            count_item, scan_item = await run_items(
                client,
                plan("count", ["det1", "det2"], num=3),
                plan("scan", ["det1"], "motor", -1, 1, 5),
            )
            run_uids = [*count_item["result"]["run_uids"], *scan_item["result"]["run_uids"]]
            assert len(run_uids) == 2
            events = await saved.wait(run_uids)
            await until(lambda: sum(n == "stop" for n, _ in received) == 2, "both stops")

        # Every document, in order, at the RemoteDispatcher.
        names = [n for n, _ in received]
        assert names == [
            *["start", "descriptor", *["event"] * 3, "stop"],
            *["start", "descriptor", *["event"] * 5, "stop"],
        ]
        assert [d["uid"] for n, d in received if n == "start"] == run_uids

        # The run_saved events name the item and the submitter.
        by_run = {e["run_uid"]: e for e in events}
        assert by_run[run_uids[0]]["item_uid"] == count_item["item_uid"]
        assert by_run[run_uids[1]]["item_uid"] == scan_item["item_uid"]
        assert {e["user"] for e in events} == {USER["user"]}
        scan_ids = [count_item["result"]["scan_ids"][0], scan_item["result"]["scan_ids"][0]]
        assert [by_run[u]["scan_id"] for u in run_uids] == scan_ids

        # The standard client reads both runs by uid, partial uid and scan_id.
        def read() -> dict[str, Any]:
            with catalog(tiled) as cat:
                return read_runs(cat)

        def read_runs(cat: Any) -> dict[str, Any]:
            count_run, scan_run = cat[run_uids[0]], cat[run_uids[1]]
            return {
                "catalog": type(cat).__name__,
                "types": type(count_run).__name__,
                "partial": cat[run_uids[0][:8]].metadata["start"]["uid"],
                "by_scan_id": [cat[s].metadata["start"]["uid"] for s in scan_ids],
                "count_det1": count_run["primary"].read()["det1"].values.tolist(),
                "scan_motor": scan_run["primary"].read()["motor"].values.tolist(),
                "start_md": dict(count_run.metadata["start"]),
                "stop_md": dict(scan_run.metadata["stop"]),
                "docs": [n for n, _ in scan_run.documents()],
            }

        got = await asyncio.to_thread(read)
        assert got["catalog"] == "CatalogOfBlueskyRuns"
        assert got["types"].startswith("BlueskyRun")
        assert got["partial"] == run_uids[0]
        assert got["by_scan_id"] == run_uids
        event_det1 = [d["data"]["det1"] for n, d in received[:6] if n == "event"]
        assert got["count_det1"] == pytest.approx(event_det1)
        assert got["scan_motor"] == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
        assert got["start_md"]["qserver_item_uid"] == count_item["item_uid"]
        assert got["start_md"]["qserver_user"] == USER["user"]
        assert got["stop_md"]["exit_status"] == "success"
        assert got["docs"] == ["start", "descriptor", *["event"] * 5, "stop"]

        # The history service links items to runs and runs to items.
        r = await client.request("history_runs", {"item_uid": scan_item["item_uid"]})
        assert r["success"], r
        assert [(x["run_uid"], x["scan_id"], x["saved"]) for x in r["runs"]] == [
            (run_uids[1], scan_ids[1], True)
        ]
        assert r["runs"][0]["url"].endswith(f"/raw/{run_uids[1]}")
        r = await client.request("history_run_item", {"run_uid": run_uids[0][:10]})
        assert r["success"], r
        assert (r["run_uid"], r["item_uid"], r["user"], r["user_group"], r["saved"]) == (
            run_uids[0],
            count_item["item_uid"],
            USER["user"],
            USER["user_group"],
            True,
        )
        assert r["item"]["result"]["run_uids"] == [run_uids[0]]
        # The same from the command line.
        out = await cli(svc, "history", "runs", scan_item["item_uid"])
        assert out["runs"][0]["run_uid"] == run_uids[1] and out["runs"][0]["saved"]
        out = await cli(svc, "history", "run", run_uids[0][:8])
        assert out["item_uid"] == count_item["item_uid"]
        r = await client.request("history_run_item", {"run_uid": "abc"})
        assert not r["success"] and "too short" in r["msg"]
        r = await client.request("history_run_item", {"run_uid": "ffffffff-0000"})
        assert not r["success"] and "No run" in r["msg"]

        # A run that starts while the writer follows the stream costs the Tiled server no
        # lookup for a partial copy, and no new writer (which fetches the container).
        async with SavedRuns(client) as saved:
            (later,) = await run_items(client, plan("count", ["det1"], num=1))
            (later_uid,) = later["result"]["run_uids"]
            await saved.wait([later_uid])
        requests = tiled_requests(tiled)
        assert f"POST /api/v1/metadata/raw/{later_uid}" in requests
        assert f"GET /api/v1/metadata/raw/{later_uid}" not in requests
        fetches = [r for r in requests if r.startswith("GET /api/v1/metadata/raw?include_data")]
        assert len(fetches) == 1, fetches
        # By default the server is told that the run's writes ended (Tiled's live streams).
        assert f"DELETE /api/v1/stream/close/raw/{later_uid}" in requests


async def test_a_server_without_live_streams_is_not_told_that_a_runs_writes_ended(
    nats_server: NatsServer, broker: KafkaBroker, tiled: TiledServer, tmp_path: Path
) -> None:
    # The embedded stack's Tiled has no streaming cache: the three stream-close calls that
    # end each run would only cost it three lookups (QSERVER_TILED_CLOSE_STREAMS=0).
    env = {"QSERVER_TILED_CLOSE_STREAMS": "0"}
    async with stack(nats_server, broker, tiled, tmp_path, env) as svc:
        client = svc.client
        assert client is not None
        await open_env(client)
        async with SavedRuns(client) as saved:
            (item,) = await run_items(client, plan("count", ["det1", "det2"], num=3))
            (uid,) = item["result"]["run_uids"]
            await saved.wait([uid])
        requests = [r for r in tiled_requests(tiled) if uid in r]
        assert f"POST /api/v1/metadata/raw/{uid}" in requests, requests
        assert not [r for r in requests if "/stream/close/" in r], requests

        def read() -> tuple[dict[str, Any], list[float]]:
            with catalog(tiled) as cat:
                run = cat[uid]
                return dict(run.metadata["stop"]), list(run["primary"].read()["det2"])

        stop, det2 = await asyncio.to_thread(read)
        assert stop["exit_status"] == "success" and stop["num_events"] == {"primary": 3}
        assert len(det2) == 3


def tiled_requests(tiled: TiledServer) -> list[str]:
    """The requests in the Tiled server's access log, as `METHOD PATH`."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", tiled.log_file.read_text(errors="replace"))
    return re.findall(r'"([A-Z]+ \S+) HTTP/', text)


async def test_history_service_killed_mid_run_saves_the_run_exactly_once(
    nats_server: NatsServer, broker: KafkaBroker, tiled: TiledServer, tmp_path: Path
) -> None:
    async with stack(nats_server, broker, tiled, tmp_path) as svc:
        client = svc.client
        assert client is not None
        await open_env(client)
        docs: list[str] = []

        async def on_doc(msg: Any) -> None:
            docs.append(msg.subject)

        sub = await client.nc.subscribe(client.subjects.docs("*"), cb=on_doc)
        async with SavedRuns(client) as saved:
            r = await client.request(
                "queue_item_add", {"item": plan("long_count", ["det1"], num=20, delay=0.1), **USER}
            )
            assert r["success"], r
            item_uid = r["item"]["item_uid"]
            assert (await client.request("queue_start"))["success"]
            # Kill the history service while the run is half done.
            await until(lambda: sum(s.endswith(".event") for s in docs) >= 5, "five events")
            svc.kill("history")
            svc.start("history")
            await svc.wait_ready()
            (item,) = await in_history(client, [item_uid])
            (run_uid,) = item["result"]["run_uids"]
            await saved.wait([run_uid], timeout=60)
        await sub.unsubscribe()

        def read() -> tuple[int, int, list[str]]:
            from tiled.queries import Eq

            with catalog(tiled) as cat:
                matches = cat.search(Eq("start.uid", run_uid))
                run = cat[run_uid]
                rows = len(run["primary"].read()["det1"])
                return len(matches), rows, [n for n, _ in run.documents()]

        n_runs, n_rows, names = await asyncio.to_thread(read)
        assert n_runs == 1
        assert n_rows == 20
        assert names == ["start", "descriptor", *["event"] * 20, "stop"]
        print(svc.procs["history"].log_tail(8))


@pytest.mark.timeout(300)
async def test_broker_killed_mid_run_every_completed_run_reaches_the_catalog_and_kafka(
    nats_server: NatsServer, tiled: TiledServer, tmp_path: Path
) -> None:
    """Issue 10, point 5 (a): the catalog does not depend on the Kafka broker at all, and
    runs published while the broker was down reach Kafka once it is back."""
    broker = KafkaBroker(log_file=tmp_path / "tansu.log").start()
    try:
        async with stack(nats_server, broker, tiled, tmp_path) as svc:
            client = svc.client
            assert client is not None
            topic: str = svc.topic  # type: ignore[attr-defined]
            await open_env(client)
            before = await run_items(client, *[plan("count", ["det1"], num=2)] * 3)

            r = await client.request(
                "queue_item_add", {"item": plan("long_count", ["det1"], num=20, delay=0.1), **USER}
            )
            assert r["success"], r
            long_uid = r["item"]["item_uid"]
            assert (await client.request("queue_start"))["success"]
            await client.wait_for(lambda st: st["re_state"] == "running", timeout=T)
            broker.stop(signal.SIGKILL)
            # While the broker is down: the long run ends, and two more run.
            (long_item,) = await in_history(client, [long_uid])
            down = await run_items(client, *[plan("count", ["det1"], num=3)] * 2)
            st = await client.wait_for(lambda st: st["kafka_pending"] > 0, timeout=T)
            print("pending for Kafka while the broker is down:", st["kafka_pending"])

            # The broker comes back empty (memory only); the export resumes where it stopped.
            broker.start()
            broker.create_topic(topic, partitions=1)
            async with remote_dispatcher(broker.bootstrap, topic) as received:
                after = await run_items(client, *[plan("count", ["det1"], num=2)] * 2)
                items = [*before, long_item, *down, *after]
                assert {i["result"]["exit_status"] for i in items} == {"completed"}
                # Every run that history lists as completed is in the catalog within 60 s.
                hist = (await client.request("history_get"))["items"]
                completed = [
                    u
                    for h in hist
                    if h["result"]["exit_status"] == "completed"
                    for u in h["result"]["run_uids"]
                ]
                assert len(completed) == 8
                deadline = time.monotonic() + 60.0
                while missing := await asyncio.to_thread(not_in_catalog, tiled, completed):
                    assert time.monotonic() < deadline, f"not in the catalog after 60 s: {missing}"
                    await asyncio.sleep(0.5)

                # Kafka: the runs of the outage and after it, whole and in order.
                kafka_runs = [*down, *after]
                uids = [i["result"]["run_uids"][0] for i in kafka_runs]
                await until(
                    lambda: set(uids) <= {d["run_start"] for n, d in received if n == "stop"},
                    "the stop documents at the RemoteDispatcher",
                    timeout=60,
                )
            await client.wait_for(lambda st: st["kafka_pending"] == 0, timeout=T)
            runs = documents_by_run(received)
            for uid, item in zip(uids, kafka_runs, strict=True):
                num = item["kwargs"]["num"]
                assert runs[uid] == ["start", "descriptor", *["event"] * num, "stop"]
    finally:
        broker.stop(signal.SIGKILL)


def documents_by_run(received: list[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """The names of each run's documents, in the order received, each document once."""
    runs: dict[str, list[str]] = {}
    descriptors: dict[str, str] = {}
    seen: set[str] = set()
    for name, doc in received:
        if doc["uid"] in seen:
            continue  # sent again after a rewind: delivery to Kafka is at least once
        seen.add(doc["uid"])
        run = doc["uid"] if name == "start" else doc.get("run_start")
        if name == "descriptor":
            descriptors[doc["uid"]] = run
        elif name == "event":
            run = descriptors.get(doc["descriptor"])
        runs.setdefault(str(run), []).append(name)
    return runs


def not_whole(cat: Any, run_uids: list[str]) -> list[str]:
    """The runs the catalog `cat` does not hold whole (with their stop document)."""
    missing = []
    for uid in run_uids:
        try:
            if not cat[uid].metadata.get("stop"):
                missing.append(uid)
        except KeyError:
            missing.append(uid)
    return missing


def not_in_catalog(tiled: TiledServer, run_uids: list[str]) -> list[str]:
    """The runs the catalog does not hold whole (with their stop document)."""
    with catalog(tiled) as cat:
        return not_whole(cat, run_uids)


async def test_catalog_down_during_a_run_the_run_is_saved_when_it_returns(
    nats_server: NatsServer, broker: KafkaBroker, tmp_path: Path
) -> None:
    tiled = TiledServer(tmp_path / "tiled").start()
    try:
        async with stack(nats_server, broker, tiled, tmp_path) as svc:
            client = svc.client
            assert client is not None
            await open_env(client)
            async with SavedRuns(client) as saved:
                (first,) = await run_items(client, plan("count", ["det1"], num=2))
                await saved.wait(first["result"]["run_uids"])

                tiled.stop(signal.SIGKILL)
                (second,) = await run_items(client, plan("count", ["det1"], num=3))
                (run_uid,) = second["result"]["run_uids"]
                await asyncio.sleep(1.0)
                assert run_uid not in {r["run_uid"] for r in saved.runs}

                # The writer waits (Tiled's client retries; past that the archiver starts over
                # from the committed offset, which is not past the run): nothing is lost.
                tiled.start()
                await saved.wait([run_uid], timeout=60)

            def read() -> list[int]:
                from tiled.queries import Eq

                with catalog(tiled) as cat:
                    uids = [first["result"]["run_uids"][0], run_uid]
                    assert [len(cat.search(Eq("start.uid", u))) for u in uids] == [1, 1]
                    return [len(cat[u]["primary"].read()["det1"]) for u in uids]

            assert await asyncio.to_thread(read) == [2, 3]
    finally:
        tiled.stop()


def catalog_writers(parent: int) -> list[int]:
    """The pids of `parent`'s children named catalog-writer (as ps and top show them)."""
    import psutil

    out = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(parent).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.name() == "catalog-writer":
                    out.append(child.pid)
    return out


def mapped(pid: int, word: str) -> bool:
    """Whether a file whose path contains `word` is mapped into the process (a library)."""
    return word in Path(f"/proc/{pid}/maps").read_text()


async def test_runs_are_written_by_a_child_of_the_history_service_restarted_when_killed(
    nats_server: NatsServer, broker: KafkaBroker, tiled: TiledServer, tmp_path: Path
) -> None:
    # Tiled's writer (dask, xarray, pandas, numba: ~200 MiB) lives in a process of its own,
    # which the history service keeps running (ADR 32).
    async with stack(nats_server, broker, tiled, tmp_path) as svc:
        client = svc.client
        assert client is not None
        history = svc.procs["history"].proc
        assert history is not None
        await until(lambda: len(catalog_writers(history.pid)) == 1, "the catalog writer")
        (writer,) = catalog_writers(history.pid)
        await open_env(client)
        async with SavedRuns(client) as saved:
            (first,) = await run_items(client, plan("count", ["det1"], num=2))
            await saved.wait(first["result"]["run_uids"])
            # The writer loaded the heavy libraries; the history service did not.
            assert mapped(writer, "numba") and mapped(writer, "pyarrow")
            assert not mapped(history.pid, "numba") and not mapped(history.pid, "pyarrow")

            os.kill(writer, signal.SIGKILL)
            await until(
                lambda: catalog_writers(history.pid) not in ([], [writer]),
                "a new catalog writer",
            )
            (second,) = await run_items(client, plan("count", ["det1"], num=3))
            (again,) = await saved.wait(second["result"]["run_uids"])
            assert not again["already_saved"]
        assert history.poll() is None  # the history service itself went on
        assert "the catalog writer ended (killed by SIGKILL)" in svc.procs["history"].log_tail(200)

        def read() -> list[int]:
            with catalog(tiled) as cat:
                return [
                    len(cat[item["result"]["run_uids"][0]]["primary"].read()["det1"])
                    for item in (first, second)
                ]

        assert await asyncio.to_thread(read) == [2, 3]
