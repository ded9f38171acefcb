"""The stack's start-up checks run in a child that exits (ADR 33): what it does, and that the
supervisor, resident for the stack's life, keeps none of the libraries they need (nor
OpenSSL or msgspec, ADR 34); nats-server's collector target; the Kafka broker's memory
bound."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qserver.client import Client
from services.stack.embedded import NATS_GC_PERCENT
from services.stack.kafka_broker import KafkaBroker
from services.stack.natsserver import NatsServer, free_port
from tests.conftest import new_topic
from tests.integration.test_stack import Stacks

# What the start-up checks load: a NATS client (asyncio), the Kafka admin client, 0MQ; and
# what the supervisor no longer loads at all (ADR 34): OpenSSL (ssl, hashlib, secrets) and
# msgspec (the configuration file is checked in a child).
START_UP_LIBRARIES = ("_asyncio", "librdkafka", "libzmq", "libcrypto", "libssl", "msgspec")


def helper(*args: str, stdin: bytes = b"") -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run(
        [sys.executable, "-m", "services.stack.readiness", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def partitions(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)
    return len(meta.topics[topic].partitions)


def test_the_document_topic_is_made_with_one_partition_and_made_again_harmlessly(
    broker: KafkaBroker,
) -> None:
    topic = new_topic()
    assert helper("kafka-topic", broker.bootstrap, topic) == (0, [])
    assert partitions(broker.bootstrap, topic) == 1
    assert helper("kafka-topic", broker.bootstrap, topic) == (0, [])  # it exists: left alone


def test_a_nats_server_that_is_not_there_is_named() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    plan = {
        "nats_url": url,
        "prefix": "qs.t",
        "timeout_s": 3,
        "roles": {"operator": {}},
        "checks": [{"name": "queue", "role": "operator"}],
        "zmq": False,
    }
    code, events = helper("ready", stdin=json.dumps(plan).encode())
    assert code == 1
    assert events[-1]["error"].startswith(f"cannot connect to NATS at {url}")


def test_a_gateway_that_never_answers_is_reported_late() -> None:
    plan = {
        "nats_url": "nats://127.0.0.1:1",
        "prefix": "qs.t",
        "timeout_s": 1,
        "roles": {},
        "checks": [{"name": "gateway", "http": f"http://127.0.0.1:{free_port()}/docs"}],
        "zmq": False,
    }
    assert helper("ready", stdin=json.dumps(plan).encode()) == (
        1,
        [{"name": "gateway", "late": "did not answer"}],
    )


async def test_the_supervisor_keeps_no_start_up_library_and_still_restarts_the_broker(
    stacks: Stacks,
) -> None:
    stack = stacks.start()  # Kafka and 0MQ on (the default), no catalog
    info = await stack.wait_info()
    os.kill(info["kafka_pid"], signal.SIGKILL)
    async with asyncio.timeout(60):
        while (await stack.wait_info())["kafka_pid"] == info["kafka_pid"]:
            await asyncio.sleep(0.1)
    assert "the Kafka broker stopped: restarting it" in stack.output()
    maps = Path(f"/proc/{stack.pid}/maps").read_text()
    assert [lib for lib in START_UP_LIBRARIES if lib in maps] == []
    # The services still map them: the check can see them.
    worker_maps = Path(f"/proc/{info['services']['worker']}/maps").read_text()
    assert "_asyncio" in worker_maps and "librdkafka" in worker_maps
    assert "libcrypto" in worker_maps and "msgspec" in worker_maps


def fill_broker(bootstrap: str, mib: int) -> None:
    """Give the broker `mib` MiB of records on a topic of their own."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    record = b"x" * 10_000
    for i in range(mib * 105):
        producer.produce(f"filler-{os.getpid()}", record)
        if i % 200 == 0:
            producer.flush(30)
    assert producer.flush(30) == 0


async def run_count(client: Client) -> str:
    """Run one `count([det1], num=2)`; its run uid."""
    item = {"item_type": "plan", "name": "count", "args": [["det1"]], "kwargs": {"num": 2}}
    r = await client.request("queue_item_add", {"item": item, "user": "u", "user_group": "primary"})
    assert r["success"], r
    assert (await client.request("queue_start"))["success"]
    await client.wait_for(
        lambda st: st["items_in_queue"] == 0 and st["manager_state"] == "idle", timeout=60
    )
    (done,) = [
        h
        for h in (await client.request("history_get"))["items"]
        if h["item_uid"] == r["item"]["item_uid"]
    ]
    uid: str = done["result"]["run_uids"][0]
    return uid


async def test_a_kafka_broker_over_its_memory_bound_is_restarted_empty_and_documents_go_on(
    stacks: Stacks,
) -> None:
    import msgpack
    import msgpack_numpy

    from tests.integration.test_kafka import read_topic

    def runs_in(info: dict[str, Any]) -> list[tuple[str, str]]:
        """(document name, run uid: the record's key) of every record of the document topic."""
        msgs = read_topic(info["kafka_bootstrap"], info["kafka_topic"], 100, timeout=5)
        docs = [msgpack.unpackb(m.value(), object_hook=msgpack_numpy.decode) for m in msgs]
        return [(name, m.key().decode()) for (name, _), m in zip(docs, msgs, strict=True)]

    stack = stacks.start("--kafka-max-mib", "40")
    info = await stack.wait_info(timeout=60)
    async with await Client.connect(info["nats_url"], info["prefix"], timeout=30.0) as client:
        assert (await client.request("environment_open"))["success"]
        await client.wait_for(
            lambda st: st["worker_environment_exists"] and st["manager_state"] == "idle", 60
        )
        first = await run_count(client)
        before = await asyncio.to_thread(runs_in, info)
        assert [n for n, _ in before] == ["start", "descriptor", "event", "event", "stop"]
        assert {u for _, u in before} == {first}
        await asyncio.to_thread(fill_broker, info["kafka_bootstrap"], 50)
        async with asyncio.timeout(90):  # checked every KAFKA_MEMORY_CHECK_S
            while (await stack.wait_info())["kafka_pid"] == info["kafka_pid"]:
                await asyncio.sleep(0.2)
        assert "over its bound of 40 MiB (--kafka-max-mib" in stack.output()
        assert "the Kafka broker stopped" not in stack.output()  # a restart, not a crash
        again = await stack.wait_info()
        assert again["kafka_bootstrap"] == info["kafka_bootstrap"]
        assert partitions(again["kafka_bootstrap"], again["kafka_topic"]) == 1
        # Empty: the first run is gone from Kafka; the next one arrives whole.
        second = await run_count(client)
        st = await client.wait_for(lambda st: st["kafka_pending"] == 0, timeout=60)
        assert st["kafka_failed"] == 0
        runs = await asyncio.to_thread(runs_in, again)
        assert [n for n, _ in runs] == ["start", "descriptor", "event", "event", "stop"]
        assert {u for _, u in runs} == {second} and first != second


async def test_nats_server_gets_a_lower_gc_target_and_no_memory_limit_unless_the_user_sets_one(
    stacks: Stacks, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOGC", raising=False)
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    stack = stacks.start("--no-kafka")
    info = await stack.wait_info()
    environ = Path(f"/proc/{info['nats_pid']}/environ").read_bytes().split(b"\0")
    assert f"GOGC={NATS_GC_PERCENT}".encode() in environ
    # No fixed limit: one near the live heap kept the collector running (ADR 34, amendment).
    assert not [v for v in environ if v.startswith(b"GOMEMLIMIT=")]
    # The user's own settings win (the Go runtime reads them from the environment).
    for name, value in (("GOGC", "200"), ("GOMEMLIMIT", "256MiB")):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            server = NatsServer(tmp_path / name, gc_percent=NATS_GC_PERCENT).start()
            try:
                assert server.proc is not None
                environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
                assert f"{name}={value}".encode() in environ
                assert not [v for v in environ if v.startswith(b"GOGC=") and v != b"GOGC=200"]
            finally:
                server.stop()


def test_a_bad_configuration_file_stops_the_stack_before_anything_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "qserver.yml"
    cfg.write_text("nats:\n  replicas: many\n")
    data_dir = tmp_path / "data"
    argv = [sys.executable, "-m", "services.stack.embedded", "--config", str(cfg)]
    argv += ["--data-dir", str(data_dir), f"--nats-port={free_port()}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "configuration error" in done.stderr and "nats.replicas" in done.stderr, done.stderr
    assert not (data_dir / "stack.json").exists()


async def test_a_service_that_dies_while_starting_stops_the_start_naming_it_and_its_log(
    stacks: Stacks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", "not a key")  # the bridge refuses
    stack = stacks.start("--no-kafka")
    assert await stack.wait_exit(timeout=60) == 1
    out = stack.output()
    assert "error: the 0MQ bridge exited with code" in out, out
    assert "zmq_bridge.log" in out and "must be a 40-character z85 string" in out, out
    assert not stack.descendants()  # and nothing is left running


async def test_qserver_stack_up_becomes_the_supervisor_itself(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ports = [f"--{name}-port={free_port()}" for name in ("nats", "http", "zmq", "zmq-info")]
    argv = [str(Path(sys.executable).parent / "qserver"), "stack", "up", "--data-dir"]
    argv += [str(data_dir), "--no-kafka", "--no-catalog", "--use-ipython-kernel=OFF", *ports]
    out_file = tmp_path / "out"
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        async with asyncio.timeout(90):
            while not (data_dir / "stack.json").exists():
                assert proc.poll() is None, out_file.read_text()
                await asyncio.sleep(0.1)
        info = json.loads((data_dir / "stack.json").read_text())
        # The same process, now `python -m services.stack.embedded` with the CLI's options.
        assert info["pid"] == proc.pid
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"services.stack.embedded" in cmdline and b"OFF" in cmdline
        assert info["http_port"] == int(ports[1].split("=")[1])
        assert info["kafka_bootstrap"] is None and info["tiled_url"] is None
        # The CLI's modules went with the exec: no asyncio here any more.
        assert "_asyncio" not in Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert "stack stopped" in out_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
