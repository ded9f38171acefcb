"""A service takes its settings from a configuration file, below the environment and flags."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from qserver.client import Client, NoAnswer
from services.stack.natsserver import NatsServer
from tests.conftest import unique_prefix


async def answers(url: str, prefix: str, timeout: float = 60.0) -> bool:
    c = await Client.connect(url, prefix, timeout=1.0)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                await c.request("history_get", {"limit": 0}, timeout=0.5)
                return True
            except NoAnswer:
                await asyncio.sleep(0.1)
        return False
    finally:
        await c.close()


def history(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.history", *args],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("QSERVER_")},
            "QSERVER_NATS_URL": url,
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_the_file_sets_what_the_environment_does_not(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    from_file, from_env = unique_prefix(), unique_prefix()
    cfg = tmp_path / "qserver.yml"
    cfg.write_text(f"nats:\n  prefix: {from_file}\nlog:\n  format: json\n")

    proc = history(nats_server.url, "--config", str(cfg))
    try:
        assert await answers(nats_server.url, from_file)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert b'"level": "INFO"' in out or b'"level":"INFO"' in out  # json logs, from the file

    proc = history(nats_server.url, env={"QSERVER_CONFIG": str(cfg), "QSERVER_PREFIX": from_env})
    try:
        assert await answers(nats_server.url, from_env)  # the environment wins
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_a_bad_file_stops_the_service_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "qserver.yml"
    cfg.write_text("nats:\n  replicas: many\n")
    proc = history("nats://127.0.0.1:1", "--config", str(cfg))
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert b"configuration error" in out and b"nats.replicas" in out
