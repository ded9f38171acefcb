"""Documents to Kafka (the worker service's export of the document stream, ADR 10): a real
Tansu broker, the worker service as a process, and consumers built on bluesky-kafka's
RemoteDispatcher and on a plain confluent-kafka Consumer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from qserver.documents import decode
from services.stack.kafka_broker import KafkaBroker
from services.stack.natsserver import NatsServer
from tests.conftest import new_topic
from tests.integration.test_worker import Worker

T = 60.0  # the bound of every wait (generous: the suite runs on busy machines)


class KafkaWorker(Worker):
    """A worker service whose environment publishes documents to `topic` at `bootstrap`."""

    def __init__(self, nats_server: NatsServer, log: Path, bootstrap: str, topic: str) -> None:
        super().__init__(nats_server, log)
        self.kafka_env = {"QSERVER_KAFKA_BOOTSTRAP": bootstrap, "QSERVER_KAFKA_TOPIC": topic}

    def start(self) -> None:
        argv = [sys.executable, "-m", "services.worker", "--nats-url", self.url]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--prefix", self.subjects.prefix],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.kafka_env},
            )


@contextlib.asynccontextmanager
async def kafka_worker(
    nats_server: NatsServer, log: Path, bootstrap: str, topic: str
) -> AsyncIterator[KafkaWorker]:
    w = KafkaWorker(nats_server, log, bootstrap, topic)
    w.start()
    try:
        await w.connect()
        await w.open()
        yield w
    finally:
        await w.stop()


@contextlib.asynccontextmanager
async def remote_dispatcher(
    bootstrap: str, topic: str
) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """bluesky-kafka's RemoteDispatcher on a thread; yields the (name, doc) pairs it gets."""
    from bluesky_kafka import RemoteDispatcher

    received: list[tuple[str, dict[str, Any]]] = []
    dispatcher = RemoteDispatcher(
        topics=[topic],
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        consumer_config={
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 500,
        },
    )
    dispatcher.subscribe(lambda name, doc: received.append((name, doc)))
    stop = threading.Event()
    thread = threading.Thread(
        target=dispatcher.start, kwargs={"continue_polling": lambda: not stop.is_set()}
    )
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, T)
        with contextlib.suppress(Exception):
            dispatcher._bluesky_consumer._consumer.close()
        assert not thread.is_alive()


async def until(cond: Callable[[], bool], what: str, timeout: float = T) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = T) -> list[Any]:
    """`count` messages from partition 0, from the beginning, without a consumer group."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
        return out
    finally:
        c.close()


async def test_every_document_reaches_remote_dispatcher_in_order(
    nats_server: NatsServer, broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = new_topic()
    broker.create_topic(topic, partitions=1)
    log = tmp_path / "worker.log"
    async with (
        remote_dispatcher(broker.bootstrap, topic) as received,
        kafka_worker(nats_server, log, broker.bootstrap, topic) as w,
    ):
        results = w.results()
        await w.run("count", ["det1", "det2"], num=3)
        count_res = await anext(results)
        await w.run("scan", ["det1"], "motor", -1, 1, 5)
        scan_res = await anext(results)
        assert count_res.result.exit_status == scan_res.result.exit_status == "completed"
        run_uids = [*count_res.result.run_uids, *scan_res.result.run_uids]
        assert len(run_uids) == 2
        await until(
            lambda: sum(1 for name, _ in received if name == "stop") == 2,
            "both stop documents at the RemoteDispatcher",
        )
        await w.until(
            lambda: (
                w.env is not None
                and (w.env.docs_pending, w.env.docs_failed) == (0, 0)
                and (w.worker.kafka_pending, w.worker.kafka_failed) == (0, 0)
            ),
            "nothing pending in the state",
        )
        assert (await w.worker_cmd("close")) == {"success": True, "msg": ""}
        await w.until(lambda: not w.worker.env_exists, "environment closed")

    names = [name for name, _ in received]
    runs = [d["uid"] for n, d in received if n == "start"]
    assert runs == run_uids
    count_names = ["start", "descriptor", *["event"] * 3, "stop"]
    scan_names = ["start", "descriptor", *["event"] * 5, "stop"]
    assert names == [*count_names, *scan_names]
    starts = {d["uid"]: d for n, d in received if n == "start"}
    assert starts[run_uids[0]]["plan_name"] == "count"
    assert starts[run_uids[1]]["plan_name"] == "scan"
    stops = [d for n, d in received if n == "stop"]
    assert [s["run_start"] for s in stops] == run_uids
    assert [s["num_events"] for s in stops] == [{"primary": 3}, {"primary": 5}]
    events = [d for n, d in received if n == "event"]
    assert [e["seq_num"] for e in events] == [1, 2, 3, 1, 2, 3, 4, 5]
    assert {"det1", "det2"} <= set(events[0]["data"])
    motor_positions = [e["data"]["motor"] for e in events[3:]]
    assert motor_positions == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])

    # The wire format, read without bluesky-kafka: keys are the runs' start uids.
    msgs = await asyncio.to_thread(read_topic, broker.bootstrap, topic, len(received))
    assert len(msgs) == len(received)
    decoded = [decode(m.value()) for m in msgs]
    assert [n for n, _ in decoded] == names
    keys = [m.key().decode() for m in msgs]
    assert keys == [run_uids[0]] * 6 + [run_uids[1]] * 8


async def test_a_plan_completes_with_the_broker_down_and_kafka_gets_it_when_it_is_back(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    broker = KafkaBroker(log_file=tmp_path / "tansu.log").start()
    topic = new_topic()
    try:
        broker.create_topic(topic, partitions=1)
        async with kafka_worker(nats_server, tmp_path / "worker.log", broker.bootstrap, topic) as w:
            results = w.results()
            # A crash: SIGTERM would let Tansu drain its connections for 5 s first.
            broker.stop(signal.SIGKILL)
            t0 = time.monotonic()
            await w.run("count", ["det1"], num=3)
            res = await anext(results)
            assert res.result.exit_status == "completed" and res.result.msg == ""
            assert time.monotonic() - t0 < 5.0  # not held up by the broker
            (run_uid,) = res.result.run_uids
            # The documents wait in the document stream; the state says how many.
            await w.until(lambda: w.worker.kafka_pending >= 6, "documents pending for Kafka")
            assert w.env is not None and (w.env.docs_pending, w.env.docs_failed) == (0, 0)

            # The broker comes back empty (memory only); the export sends the run again.
            broker.start()
            broker.create_topic(topic, partitions=1)
            async with remote_dispatcher(broker.bootstrap, topic) as received:
                await until(
                    lambda: any(n == "stop" for n, _ in received), "the stop document", timeout=60
                )
            await w.until(
                lambda: (w.worker.kafka_pending, w.worker.kafka_failed) == (0, 0),
                "nothing pending for Kafka",
            )
        assert [n for n, _ in received] == ["start", "descriptor", *["event"] * 3, "stop"]
        assert received[0][1]["uid"] == run_uid
        assert [d["seq_num"] for n, d in received if n == "event"] == [1, 2, 3]
    finally:
        broker.stop(signal.SIGKILL)


async def test_a_broker_slower_than_the_stall_check_gets_each_document_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # A busy machine once held a first delivery past the export's stall check (5 s), which
    # then sent the documents again with a new producer: the start document was in the
    # topic twice. A stopped broker is the slowest: it holds every request, reports no
    # error, and answers them all when it goes on.
    from services.worker.kafka_export import STALL_S

    broker = KafkaBroker(log_file=tmp_path / "tansu.log").start()
    topic = new_topic()
    log = tmp_path / "worker.log"
    try:
        broker.create_topic(topic, partitions=1)
        async with kafka_worker(nats_server, log, broker.bootstrap, topic) as w:
            results = w.results()
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                await w.run("count", ["det1"], num=3)
                res = await anext(results)
                assert res.result.exit_status == "completed"
                (run_uid,) = res.result.run_uids
                await w.until(lambda: w.worker.kafka_pending >= 6, "documents pending for Kafka")
                # The fault itself lasts past the stall check, however busy the machine.
                held = time.monotonic() + STALL_S + 4
                await until(lambda: time.monotonic() > held, "the broker held past the check")
            finally:
                broker.proc.send_signal(signal.SIGCONT)
            await w.until(
                lambda: (w.worker.kafka_pending, w.worker.kafka_failed) == (0, 0),
                "nothing pending for Kafka",
            )
        msgs = await asyncio.to_thread(read_whole_topic, broker.bootstrap, topic)
        names = [decode(m.value())[0] for m in msgs]
        assert names == ["start", "descriptor", *["event"] * 3, "stop"]
        assert decode(msgs[0].value())[1]["uid"] == run_uid
        assert "a new producer sends them again" not in log.read_text()
    finally:
        broker.stop(signal.SIGKILL)


def read_whole_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every message of partition 0, up to the end the broker reports."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list[Any] = []
        deadline = time.monotonic() + T
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error() is None:
                out.append(msg)
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                return out
        raise AssertionError(f"no end of {topic} within {T} s ({len(out)} read)")
    finally:
        c.close()
