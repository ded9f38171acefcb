"""`qserver doctor` against running services, a Kafka broker and an HTTP health endpoint."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qserver.connect import NatsAuth
from qserver.doctor import Check, DoctorConfig, run_checks
from services.stack.kafka_broker import KafkaBroker
from services.stack.natsserver import free_port
from tests.conftest import Services

TOPIC = "doctor.bluesky.runengine.documents"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    b = KafkaBroker(log_file=tmp_path_factory.mktemp("kafka") / "tansu.log").start()
    b.create_topic(TOPIC)
    yield b
    b.stop(signal.SIGKILL)  # memory only; SIGTERM would wait for clients


class Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tiled_like() -> Iterator[str]:
    """An HTTP server with a /healthz, as Tiled has."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def config(svc: Services, broker: KafkaBroker, tiled: str, **changes: str) -> DoctorConfig:
    values: dict[str, str] = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_topic": TOPIC,
        "tiled_url": tiled,
        **changes,
    }
    return DoctorConfig(
        nats_url=svc.nats.url, prefix=svc.prefix, auth=NatsAuth(), timeout=2.0, **values
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def test_everything_running_is_reported_ok(
    services: Services, broker: KafkaBroker, tiled_like: str
) -> None:
    checks = by_name(await run_checks(config(services, broker, tiled_like)))
    for name in ("NATS", "JetStream", "queue service", "history service", "worker service"):
        assert checks[name].status == "ok", checks[name]
    assert checks["queue service"].detail.startswith("1 instance")
    assert checks["worker environment"].detail.startswith("closed")
    assert checks["Kafka"].status == "ok", checks["Kafka"]
    assert checks["catalog (Tiled)"].status == "ok"
    assert checks["HTTP gateway"].status == "skip"


async def test_a_stopped_service_is_named(
    services: Services, broker: KafkaBroker, tiled_like: str
) -> None:
    services.procs["history"].stop()
    checks = by_name(await run_checks(config(services, broker, tiled_like)))
    assert checks["history service"].status == "fail"
    assert "not running" in checks["history service"].detail
    assert services.prefix in checks["history service"].detail
    assert checks["queue service"].status == "ok"


async def test_missing_topic_and_silent_catalog_are_failures(
    services: Services, broker: KafkaBroker
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    checks = by_name(await run_checks(config(services, broker, dead, kafka_topic="no.such.topic")))
    assert checks["Kafka"].status == "fail"
    assert "'no.such.topic' does not exist" in checks["Kafka"].detail
    assert checks["catalog (Tiled)"].status == "fail"
    assert "does not answer" in checks["catalog (Tiled)"].detail


async def run_doctor(svc: Services, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qserver.cli", "-a", svc.nats.url, "--prefix", svc.prefix,
        "doctor", "--data-dir", str(svc.log_dir / "no-stack"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_exit_code_says_whether_all_is_well(services: Services, tmp_path: Path) -> None:
    rc, out = await run_doctor(services)
    assert rc == 0, out
    assert out.strip().endswith("all good")
    services.procs["worker"].stop()
    rc, out = await run_doctor(services)
    assert rc == 4, out
    assert "FAIL  worker service: not running" in out
    assert out.strip().endswith("1 problem(s): worker service")


async def healthcheck(svc: Services, name: str) -> tuple[int, str]:
    env = {**os.environ, "QSERVER_NATS_URL": svc.nats.url, "QSERVER_PREFIX": svc.prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qserver.healthcheck", name, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_container_healthcheck_passes_for_a_running_service_only(services: Services) -> None:
    assert await healthcheck(services, "queue") == (0, "")
    services.procs["queue"].stop()
    rc, out = await healthcheck(services, "queue")
    assert rc == 1
    assert f"no qserver-queue with prefix '{services.prefix}'" in out
