"""`bluesky_queueserver_api.http.REManagerAPI`, unchanged, drives the stack through the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.http import REManagerAPI
from bluesky_queueserver_api.http.aio import REManagerAPI as AsyncREManagerAPI

from tests.conftest import Services
from tests.integration.gateway_support import Gateway, gateway_for

KEY = "SingleUserKeyForTests123"
SINGLE_USER = "UNAUTHENTICATED_SINGLE_USER"


@pytest.fixture(scope="module")
async def gateway(module_services: Services) -> AsyncIterator[Gateway]:
    env = {"QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY": KEY}
    async with gateway_for(module_services, env=env) as gw:
        yield gw


def running(st: dict[str, Any]) -> bool:
    return bool(st["re_state"] == "running")


def slow_count() -> BPlan:
    return BPlan("count", ["det1", "det2"], num=30, delay=0.1)


def test_a_full_session_with_the_threaded_client(gateway: Gateway) -> None:
    RM = REManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=KEY)
    try:
        RM.queue_clear()
        assert RM.status()["manager_state"] == "idle"
        RM.environment_open()
        RM.wait_for_idle(timeout=30)
        assert RM.status(reload=True)["worker_environment_exists"]
        RM.console_monitor.enable()

        # Editing: add, batch add, get, update, move, remove, batch remove.
        first = RM.item_add(slow_count())["item"]
        assert (first["user"], first["user_group"]) == (SINGLE_USER, "primary")
        batch = RM.item_add_batch([BPlan("count", ["det1"]), BPlan("count", ["det2"])])
        assert batch["success"] and len(batch["items"]) == 2
        back = RM.item_get(pos="back")["item"]
        back["kwargs"] = {"num": 2}
        assert RM.item_update(back)["item"]["kwargs"] == {"num": 2}
        RM.item_move(pos="back", pos_dest="front")
        assert RM.queue_get()["items"][0]["item_uid"] == back["item_uid"]
        RM.item_move(uid=back["item_uid"], pos_dest="back")
        extra = RM.item_add(BPlan("count", ["det1"]))["item"]
        RM.item_remove(uid=extra["item_uid"])
        RM.item_remove_batch(uids=[batch["items"][0]["item_uid"]])
        assert [it["item_uid"] for it in RM.queue_get()["items"]] == [
            first["item_uid"],
            back["item_uid"],
        ]

        # Running: start, pause, resume, wait for idle, history.
        RM.history_clear()
        RM.queue_start()
        RM.wait_for_condition(running, timeout=20)
        RM.re_pause("immediate")
        RM.wait_for_idle_or_paused(timeout=20)
        assert RM.status(reload=True)["manager_state"] == "paused"
        RM.re_resume()
        RM.wait_for_idle(timeout=30)
        history = RM.history_get()["items"]
        assert [h["item_uid"] for h in history] == [first["item_uid"], back["item_uid"]]
        assert [h["result"]["exit_status"] for h in history] == ["completed", "completed"]
        assert RM.re_runs(option="active")["run_list"] == []  # nothing runs now
        RM.item_execute(BPlan("count", ["det1"]))
        RM.wait_for_idle(timeout=20)
        assert len(RM.history_get()["items"]) == 3
        assert RM.environment_update()["success"]
        RM.wait_for_idle(timeout=20)
        RM.queue_mode_set(loop=False)
        RM.queue_autostart(False)
        RM.permissions_reload()

        # Lists, permissions, locks, console.
        assert "count" in RM.plans_allowed()["plans_allowed"]
        assert "det1" in RM.devices_allowed()["devices_allowed"]
        assert "count" in RM.plans_existing()["plans_existing"]
        assert "det1" in RM.devices_existing()["devices_existing"]
        assert "primary" in RM.permissions_get()["user_group_permissions"]["user_groups"]
        info = RM.lock(lock_key="lab-key", environment=True, note="testing")["lock_info"]
        assert info["environment"] and info["user"] == SINGLE_USER
        with pytest.raises(RM.RequestFailedError, match="locked"):
            RM.environment_close()
        RM.unlock(lock_key="lab-key")
        assert not RM.lock_info()["lock_info"]["environment"]
        assert RM.config_get()["config"] == {"ip_connect_info": {}}  # the reference's, no kernel
        # The console monitor polls /api/console_output_update twice a second.
        deadline = time.monotonic() + 5
        while "Starting a plan 'count'" not in RM.console_monitor.text():
            assert time.monotonic() < deadline, RM.console_monitor.text()
            time.sleep(0.1)

        RM.environment_close()
        RM.wait_for_idle(timeout=30)
        assert not RM.status(reload=True)["worker_environment_exists"]
    finally:
        RM.close()


async def test_a_full_session_with_the_asyncio_client(gateway: Gateway) -> None:
    RM = AsyncREManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=KEY)
    try:
        await RM.queue_clear()
        await RM.history_clear()
        await RM.environment_open()
        await RM.wait_for_idle(timeout=30)
        uids = [(await RM.item_add(slow_count()))["item"]["item_uid"]]
        uids.append((await RM.item_add(BPlan("count", ["det1"])))["item"]["item_uid"])
        await RM.queue_start()
        await RM.wait_for_condition(running, timeout=20)
        await RM.re_pause("deferred")
        await RM.wait_for_idle_or_paused(timeout=20)
        await RM.re_resume()
        await RM.wait_for_idle(timeout=30)
        history = (await RM.history_get())["items"]
        assert [h["item_uid"] for h in history] == uids
        await RM.environment_close()
        await RM.wait_for_idle(timeout=30)
        assert not (await RM.status(reload=True))["worker_environment_exists"]
    finally:
        await RM.close()


async def test_a_refused_request_raises_request_failed(gateway: Gateway) -> None:
    RM = AsyncREManagerAPI(http_server_uri=gateway.url)
    RM.set_authorization_key(api_key=KEY)
    try:
        with pytest.raises(RM.RequestFailedError, match="environment"):
            await RM.queue_start()  # no environment is open
        RM.set_authorization_key(api_key="WrongKey")
        with pytest.raises(RM.HTTPClientError, match="401"):
            await RM.status(reload=True)
    finally:
        await RM.close()
    await asyncio.sleep(0)


def test_refusals_carry_the_reference_texts_its_client_matches(gateway: Gateway) -> None:
    """The reference client's own tests match these texts (bluesky-queueserver-api 0.0.13)."""
    RM = REManagerAPI(http_server_uri=gateway.url, request_fail_exceptions=False)
    RM.set_authorization_key(api_key=KEY)
    try:
        # No item: a refusal with status 200, not an HTTP error.
        r = RM.send_request(method="queue_item_add", params={"user": "someone"})
        assert r == {
            "success": False,
            "msg": "Failed to add an item: Incorrect request format: request contains no item info",
            "qsize": None,
            "item": None,
        }
        r = RM.item_remove_batch(uids=["some-uid"], ignore_missing=False)
        assert r == {
            "success": False,
            "msg": "Failed to remove a batch of items: "
            "The queue does not contain items with the following UIDs: ['some-uid']",
            "items": [],
            "qsize": None,
        }
        r = RM.lock(lock_key="k")
        assert r == {
            "success": False,
            "msg": "Error: Invalid option: environment and/or queue must be selected: "
            "environment=False queue=False",
            "lock_info": {},
            "lock_info_uid": None,
        }
        assert RM.lock(lock_key="k", queue=True)["success"]
        try:
            lock_info = RM.lock_info()
            for method, refused in (
                ("lock_info", RM.lock_info(lock_key="wrong")),
                ("unlock", RM.unlock(lock_key="wrong")),
                ("queue_clear", RM.queue_clear()),
                ("queue_item_add", RM.item_add(BPlan("count", ["det1"]))),
            ):
                prefix = "Failed to add an item: " if method == "queue_item_add" else "Error: "
                assert refused["msg"].startswith(
                    f"{prefix}Invalid lock key: \nRE Manager is locked by {SINGLE_USER} at "
                ), refused
                if method in ("lock_info", "unlock"):  # the lock as it stands
                    assert refused["lock_info"] == lock_info["lock_info"], refused
            assert refused["item"] == {"item_type": "plan", "name": "count", "args": [["det1"]]}
            assert refused["qsize"] is None
        finally:
            assert RM.unlock(lock_key="k")["success"]
        assert set(RM.history_get()) == {"success", "msg", "items", "plan_history_uid"}
    finally:
        RM.close()
