"""Opening, closing and destroying the environment: answered at once, with the reference's
intermediate manager states meanwhile, over NATS and over HTTP (ADR 17).

The reference's client (bluesky-queueserver-api) gives up on a request after 5 s, and checks
`manager_state == "creating_environment"` with `worker_environment_exists == False` right
after `environment_open` answers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bluesky_queueserver_api.http import REManagerAPI
from nats.aio.msg import Msg

from qserver.client import Client
from services.runtime.procs import ServiceProcess
from services.stack.natsserver import NatsServer
from services.worker.listgen import SIM_PROFILE
from tests.conftest import Services, report, running_services
from tests.integration.gateway_support import Gateway, gateway_for

T = 60.0  # deadline for everything without a stated bound
CLIENT_TIMEOUT_S = 5.0  # the reference client's request timeout
KEY = "SingleUserKeyForEnvStates1"

State = tuple[str, bool, str]  # manager_state, worker_environment_exists, worker_env state


class StateLog:
    """Every status event's (manager_state, worker_environment_exists, env state)."""

    def __init__(self) -> None:
        self.seen: list[State] = []

    async def on_status(self, msg: Msg) -> None:
        st = json.loads(msg.data)
        state = (
            st["manager_state"],
            st["worker_environment_exists"],
            st["worker_environment_state"],
        )
        if not self.seen or self.seen[-1] != state:
            self.seen.append(state)

    def since(self, n: int) -> list[State]:
        return self.seen[n:]


async def watch(client: Client) -> StateLog:
    log = StateLog()
    await client.nc.subscribe(client.subjects.status_event, cb=log.on_status)
    await client.nc.flush()
    return log


def state_of(st: dict[str, Any]) -> State:
    return (st["manager_state"], st["worker_environment_exists"], st["worker_environment_state"])


def open_and_idle(st: dict[str, Any]) -> bool:
    return bool(st["manager_state"] == "idle" and st["worker_environment_exists"])


def closed_and_idle(st: dict[str, Any]) -> bool:
    return bool(st["manager_state"] == "idle" and not st["worker_environment_exists"])


def only(states: list[State], manager_state: str) -> list[State]:
    return [s for s in states if s[0] == manager_state]


async def test_open_close_and_destroy_answer_at_once_and_show_the_reference_states(
    client: Client,
) -> None:
    log = await watch(client)

    # Open: answered while the environment starts; the reference's states meanwhile.
    n = len(log.seen)
    r = await client.request("environment_open", timeout=CLIENT_TIMEOUT_S)
    assert r == {"success": True, "msg": ""}
    st = await client.request("status")
    assert (st["manager_state"], st["worker_environment_exists"]) == (
        "creating_environment",
        False,
    )
    st = await client.wait_for(open_and_idle, T)
    assert st["worker_environment_state"] == "idle" and st["re_state"] == "idle"
    opening = log.since(n)
    creating = only(opening, "creating_environment")
    assert creating and all(not exists for _, exists, _ in creating), opening
    assert ("creating_environment", False, "initializing") in creating, opening
    # Its lists are there for whoever sees it open: a plan validates at once.
    assert (
        "count"
        in (await client.request("plans_allowed", {"user_group": "primary"}))["plans_allowed"]
    )

    # Close: answered at once, `closing_environment` until the process is gone.
    n = len(log.seen)
    r = await client.request("environment_close", timeout=CLIENT_TIMEOUT_S)
    assert r == {"success": True, "msg": ""}
    st = await client.wait_for(closed_and_idle, T)
    assert st["worker_environment_state"] == "closed" and st["re_state"] is None
    closing = log.since(n)
    assert only(closing, "closing_environment"), closing
    # It exists until its process is gone, as the reference's: whoever waits for it to be
    # gone can open the next one at once.
    assert all(exists for _, exists, _ in only(closing, "closing_environment")), closing
    assert closing[-1] == ("idle", False, "closed"), closing

    # Destroy: the same, with `destroying_environment`.
    r = await client.request("environment_open", timeout=CLIENT_TIMEOUT_S)
    assert r["success"], r
    await client.wait_for(open_and_idle, T)
    n = len(log.seen)
    r = await client.request("environment_destroy", timeout=CLIENT_TIMEOUT_S)
    assert r == {"success": True, "msg": ""}
    st = await client.wait_for(closed_and_idle, T)
    destroying = log.since(n)
    assert only(destroying, "destroying_environment"), destroying
    assert destroying[-1] == ("idle", False, "closed"), destroying


async def test_refusals_while_opening_and_closing_carry_the_reference_texts(
    client: Client,
) -> None:
    r = await client.request("environment_close")
    assert r == {"success": False, "msg": "RE Worker environment does not exist."}
    r = await client.request("environment_destroy")
    assert r == {"success": False, "msg": "RE environment does not exist"}
    assert (await client.request("environment_open"))["success"]
    r = await client.request("environment_open")
    assert r == {
        "success": False,
        "msg": "Manager is already in the process of creating the RE Worker environment.",
    }
    r = await client.request("environment_close")
    assert r == {"success": False, "msg": "RE Worker environment does not exist."}
    await client.wait_for(open_and_idle, T)
    r = await client.request("environment_open")
    assert r == {"success": False, "msg": "RE Worker environment already exists."}
    assert (await client.request("environment_close"))["success"]
    r = await client.request("environment_close")
    assert not r["success"]
    # The process may be gone already: then there is nothing left to close.
    assert r["msg"] in (
        "Manager is already in the process of closing the RE Worker environment.",
        "RE Worker environment does not exist.",
    )
    await client.wait_for(closed_and_idle, T)


async def test_a_destroy_while_opening_ends_the_open(client: Client) -> None:
    """As the reference: an environment that hangs in its startup code can be destroyed."""
    log = await watch(client)
    assert (await client.request("environment_open", timeout=CLIENT_TIMEOUT_S))["success"]
    r = await client.request("environment_destroy", timeout=CLIENT_TIMEOUT_S)
    assert r == {"success": True, "msg": ""}
    st = await client.wait_for(closed_and_idle, T)
    assert st["worker_environment_state"] == "closed"
    assert only(log.seen, "destroying_environment"), log.seen
    assert (await client.request("environment_open", timeout=CLIENT_TIMEOUT_S))["success"]
    await client.wait_for(open_and_idle, T)  # and it opens again


def slow_profile(tmp_path: Path, seconds: float) -> Path:
    """The simulated profile, with startup code that takes `seconds` first."""
    profile = tmp_path / "slow-profile"
    profile.mkdir()
    for f in SIM_PROFILE.glob("[0-9]*.py"):
        shutil.copy(f, profile / f.name)
    (profile / "01-slow.py").write_text(f"import time\ntime.sleep({seconds})\n")
    return profile


async def test_an_open_that_takes_longer_than_the_clients_timeout_is_answered_within_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    extra = {"worker": ["--startup-dir", str(slow_profile(tmp_path, 6.0))]}
    async with running_services(nats_server, tmp_path / "logs", extra) as services:
        client = services.client
        assert client is not None
        t0 = time.monotonic()
        r = await client.request("environment_open", timeout=CLIENT_TIMEOUT_S)
        answered = time.monotonic() - t0
        assert r == {"success": True, "msg": ""}
        st = await client.request("status")
        assert state_of(st)[:2] == ("creating_environment", False)
        st = await client.wait_for(open_and_idle, T)
        took = time.monotonic() - t0
        report(
            f"environment_open with 6 s of startup code: answered after {answered:.3f} s, "
            f"open after {took:.1f} s"
        )
        assert took >= 6.0  # it was creating all along, not idle


async def test_a_failed_open_goes_back_to_idle_and_says_why_in_the_console(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    broken = tmp_path / "profile"
    broken.mkdir()
    (broken / "00-ok.py").write_text("x = 1\n")
    (broken / "10-bad.py").write_text(
        "def setup():\n    raise ValueError('no beam today')\nsetup()\n"
    )
    extra = {"worker": ["--startup-dir", str(broken)]}
    async with running_services(nats_server, tmp_path / "logs", extra) as services:
        client = services.client
        assert client is not None
        console: list[str] = []

        async def collect(msg: Msg) -> None:
            console.append(msg.data.decode())

        await client.nc.subscribe(client.subjects.console_event, cb=collect)
        log = await watch(client)
        r = await client.request("environment_open", timeout=CLIENT_TIMEOUT_S)
        assert r == {"success": True, "msg": ""}  # as the reference: accepted
        st = await client.wait_for(
            lambda st: (
                closed_and_idle(st) and ("creating_environment", False, "failed") in log.seen
            ),
            T,
        )
        assert st["worker_environment_state"] == "closed"
        async with asyncio.timeout(T):
            while not any(
                "Error occurred while opening RE Worker environment" in c for c in console
            ):
                await asyncio.sleep(0.05)
        text = "".join(console)
        assert "no beam today" in text and "Traceback" in text and "10-bad.py" in text
        (line,) = [c for c in console if "Error occurred while opening" in c]
        assert "no beam today" in line
        assert "Failed to open the environment" in services.procs["queue"].log_tail(200)
        assert only(log.seen, "idle")[-1] == ("idle", False, "closed")


# ----- a queue service restarted, or replaced by its standby, in the middle -----


async def _restart_queue_in_the_middle(services: Services, method: str) -> list[State]:
    """`method`, then the queue service SIGKILLed at once and started again."""
    client = services.client
    assert client is not None
    log = await watch(client)
    n = len(log.seen)
    r = await client.request(method, timeout=CLIENT_TIMEOUT_S)
    assert r["success"], r
    services.kill("queue")
    services.start("queue")
    await services.wait_ready(T)
    return log.since(n)


async def test_a_queue_service_restarted_while_opening_shows_the_open_end(
    services: Services, client: Client
) -> None:
    await _restart_queue_in_the_middle(services, "environment_open")
    st = await client.wait_for(open_and_idle, T)
    assert st["worker_environment_state"] == "idle"
    # No stale state afterwards: it stays open and idle.
    for _ in range(3):
        await asyncio.sleep(1.0)
        assert open_and_idle(await client.request("status"))


async def test_a_queue_service_restarted_while_closing_shows_the_close_end(
    services: Services, client: Client
) -> None:
    assert (await client.request("environment_open", timeout=CLIENT_TIMEOUT_S))["success"]
    await client.wait_for(open_and_idle, T)
    await _restart_queue_in_the_middle(services, "environment_close")
    st = await client.wait_for(closed_and_idle, T)
    assert st["worker_environment_state"] == "closed"
    for _ in range(3):
        await asyncio.sleep(1.0)
        assert closed_and_idle(await client.request("status"))


async def test_a_standby_that_takes_over_while_opening_shows_creating_then_open(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The state comes from the worker's and the environment's reports, which a standby
    follows too: it shows `creating_environment` while the environment starts (8 s of
    startup code here), then idle with the environment open."""
    extra = {"worker": ["--startup-dir", str(slow_profile(tmp_path, 8.0))]}
    async with running_services(nats_server, tmp_path / "logs", extra) as services:
        client = services.client
        assert client is not None
        standby = ServiceProcess(
            "queue",
            services.nats.url,
            services.prefix,
            tmp_path / "logs" / "queue-standby.log",
            "--instance",
            "standby",
        ).start()
        try:
            async with asyncio.timeout(T):
                while "standby (instance standby)" not in standby.log_tail(50):
                    await asyncio.sleep(0.05)
            r = await client.request("environment_open", timeout=CLIENT_TIMEOUT_S)
            assert r["success"], r
            await client.wait_for(lambda st: st["worker_environment_state"] == "initializing", T)
            services.kill("queue")  # the leader, while the environment starts
            async with asyncio.timeout(T):
                while "leads now" not in standby.log_tail(50):
                    await asyncio.sleep(0.05)
            st = await client.request("status")  # the new leader's
            assert state_of(st) == ("creating_environment", False, "initializing"), st
            st = await client.wait_for(open_and_idle, T)
            assert st["worker_environment_state"] == "idle"
        finally:
            standby.stop()


# ----- over HTTP, with the reference's client -----


@pytest.fixture
async def gateway(services: Services) -> AsyncIterator[Gateway]:
    env = {"QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY}
    async with gateway_for(services, env=env) as gw:
        yield gw


def _reference_session(url: str, destroy: bool, seen: list[str], stop: threading.Event) -> None:
    """test_environment_close_destroy_01 of bluesky-queueserver-api, and a watcher."""
    watcher = REManagerAPI(http_server_uri=url)
    watcher.set_authorization_key(api_key=KEY)

    def poll() -> None:
        while not stop.is_set():
            state = watcher.status(reload=True)["manager_state"]
            if not seen or seen[-1] != state:
                seen.append(state)
            stop.wait(0.02)

    t = threading.Thread(target=poll)
    t.start()
    RM = REManagerAPI(http_server_uri=url)
    RM.set_authorization_key(api_key=KEY)
    try:

        def check(st: dict[str, Any], manager_state: str, exists: bool) -> None:
            assert (st["manager_state"], st["worker_environment_exists"]) == (
                manager_state,
                exists,
            )

        check(RM.status(), "idle", False)
        assert RM.environment_open() == {"success": True, "msg": ""}
        check(RM.status(), "creating_environment", False)
        RM.wait_for_idle(timeout=T)
        check(RM.status(), "idle", True)
        if destroy:
            assert RM.environment_destroy() == {"success": True, "msg": ""}
        else:
            assert RM.environment_close() == {"success": True, "msg": ""}
        RM.wait_for_idle(timeout=T)
        check(RM.status(), "idle", False)
    finally:
        stop.set()
        t.join()
        RM.close()
        watcher.close()


@pytest.mark.parametrize("destroy", [False, True])
async def test_the_reference_clients_open_close_destroy_test_passes_over_http(
    gateway: Gateway, destroy: bool
) -> None:
    seen: list[str] = []
    await asyncio.to_thread(_reference_session, gateway.url, destroy, seen, threading.Event())
    assert "creating_environment" in seen, seen
    assert seen[-1] == "idle", seen
