"""A stack on a data dir of its own is found by `qserver doctor`, `stack info` and every
client through its NATS address, and they say where they looked when they find none."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.stack.natsserver import free_port


class Home:
    """An OS user's directories of its own: a default data dir with no stack, a registry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "XDG_DATA_HOME": str(root / "share"),
            "XDG_STATE_HOME": str(root / "state"),
        }
        for var in ("QSERVER_DATA_DIR", "QSERVER_NATS_URL", "QSERVER_PREFIX"):
            self.env.pop(var, None)

    def with_vars(self, **values: str) -> dict[str, str]:
        return {**self.env, **values}

    @property
    def registry(self) -> Path:
        return self.root / "state" / "qserver" / "stacks"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def stack(home: Home, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    data_dir = tmp_path / "elsewhere"
    out = open(tmp_path / "stack.out", "wb")  # noqa: SIM115 - closed below
    argv = [
        sys.executable, "-m", "services.stack.embedded", "--data-dir", str(data_dir),
        "--nats-port", str(free_port()), "--http-port", str(free_port()),
        "--no-catalog", "--no-kafka",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=home.env)
    try:
        yield proc, data_dir
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


async def wait_info(proc: subprocess.Popen[bytes], data_dir: Path) -> dict[str, object]:
    async with asyncio.timeout(90):
        while True:
            assert proc.poll() is None, "the stack exited"
            with contextlib.suppress(FileNotFoundError, ValueError):
                info: dict[str, object] = json.loads((data_dir / "stack.json").read_text())
                if info.get("pid") == proc.pid:
                    return info
            await asyncio.sleep(0.1)


async def qserver(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "qserver.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.timeout(240)
async def test_a_stack_on_another_data_dir_is_found_by_its_nats_address(
    home: Home, stack: tuple[subprocess.Popen[bytes], Path]
) -> None:
    proc, data_dir = stack
    info = await wait_info(proc, data_dir)
    url = str(info["nats_url"])
    by_url = home.with_vars(QSERVER_NATS_URL=url)

    rc, out = await qserver(by_url, "doctor")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"ok    local stack: {data_dir} (pid {proc.pid}, NATS {url}")
    for name in ("NATS", "queue service", "history service", "worker service", "HTTP gateway"):
        assert any(line.startswith(f"ok    {name}: ") for line in lines), (name, out)
    assert "operator.nk" in out  # the stack's client key, found through the registry

    rc, out = await qserver(by_url, "stack", "info")
    assert rc == 0, out
    assert json.loads(out)["data_dir"] == str(data_dir)
    rc, out = await qserver(by_url, "status")
    assert rc == 0 and json.loads(out)["manager_state"] == "idle", out
    # -a names the server as well as the variable does.
    rc, out = await qserver(home.env, "-a", url, "stack", "info")
    assert rc == 0 and json.loads(out)["pid"] == proc.pid, out

    # The data dir itself, as a flag or a variable.
    for env, args in (
        (home.env, ("stack", "info", "--data-dir", str(data_dir))),
        (home.with_vars(QSERVER_DATA_DIR=str(data_dir)), ("stack", "info")),
    ):
        rc, out = await qserver(env, *args)
        assert rc == 0 and json.loads(out)["nats_url"] == url, out
    rc, out = await qserver(home.with_vars(QSERVER_DATA_DIR=str(data_dir)), "doctor")
    assert rc == 0 and f"local stack: {data_dir}" in out, out

    # Nothing that names it: every place looked at is said, and the stack that runs.
    default = home.root / "share" / "qserver"
    rc, out = await qserver(home.env, "stack", "info")
    assert rc == 3, out
    assert f"{default} (the default data dir): no stack running there" in out
    assert f"{data_dir} (NATS {url})" in out and "$QSERVER_NATS_URL" in out
    rc, out = await qserver(home.env, "doctor")
    assert out.startswith("skip  local stack: none found: looked at"), out
    assert str(data_dir) in out.splitlines()[0]
    # Another server's address does not get this stack's key.
    rc, out = await qserver(home.with_vars(QSERVER_NATS_URL="nats://127.0.0.1:1"), "stack", "info")
    assert rc == 3 and "none at nats://127.0.0.1:1" in out, out

    # Stopped, it is no longer registered.
    assert list(home.registry.glob("*.json"))
    proc.terminate()
    assert proc.wait(60) == 0
    assert list(home.registry.glob("*.json")) == []
    rc, out = await qserver(by_url, "stack", "info")
    assert rc == 3 and "none running" in out, out


async def test_a_wrong_data_dir_is_named_in_the_answer(home: Home, tmp_path: Path) -> None:
    missing = tmp_path / "no-stack-here"
    rc, out = await qserver(home.env, "stack", "info", "--data-dir", str(missing))
    assert rc == 3
    assert f"looked at {missing} (--data-dir): no stack running there" in out
    env = home.with_vars(QSERVER_DATA_DIR=str(missing))
    rc, out = await qserver(env, "-a", "nats://127.0.0.1:1", "doctor")
    assert rc == 4  # nothing answers there either
    assert f"looked at {missing} ($QSERVER_DATA_DIR): no stack running there" in out
