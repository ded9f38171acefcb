"""`item_dry_run` against real services (ADR 31): plans simulated in the environment, nothing
moved, nothing queued or recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qserver.client import Client
from qserver.protocol.api import REQUEST_TYPES
from services.stack.natsserver import NatsServer
from tests.conftest import USER, Services
from tests.integration.test_execution import add, idle, open_env, until
from tests.integration.test_kernel import Console, connection_file, holding, kernel_services
from tests.integration.test_tasks import completed, execute, func

TEST_USER = {"user": "tester", "user_group": "test_user"}


def scan(motor: str, start: float, stop: float, num: int) -> dict[str, Any]:
    args = [["det1"], motor, start, stop]
    return {"item_type": "plan", "name": "scan", "args": args, "kwargs": {"num": num}}


async def dry_run(client: Client, **params: Any) -> dict[str, Any]:
    return await client.request("item_dry_run", params)


async def position(client: Client, device: str) -> float:
    """Where a device of the environment is, read by a script: it was not moved."""
    r = await client.request("script_upload", {"script": f"push_buffer_element({device}.position)"})
    assert r["success"], r
    assert (await completed(client, r["task_uid"]))["success"]
    await until(client, idle)
    popped = await execute(client, func("pop_buffer_element"))
    return (await completed(client, popped["task_uid"]))["return_value"]  # type: ignore[no-any-return]


@pytest.fixture
async def env(services: Services) -> Client:
    assert services.client is not None
    await open_env(services.client)
    return services.client


async def test_a_dry_run_of_a_queued_scan_reports_the_motor_range_and_points(env: Client) -> None:
    item = await add(env, scan("motor", -1, 2, 7))
    before = await env.request("status")
    r = await dry_run(env, uid=item["item_uid"])
    assert r["success"], r
    assert r["source"] == "queue" and r["item"]["item_uid"] == item["item_uid"]
    report = r["report"]
    assert report["plan_name"] == "scan" and report["complete"] is True
    assert report["num_points"] == 7 and report["num_points_declared"] == 7
    assert report["runs"] == 1 and report["events"] == {"primary": 7}
    (motor,) = report["motors"]
    assert motor["name"] == "motor" and (motor["min"], motor["max"]) == (-1.0, 2.0)
    assert motor["moves"] == 7 and motor["limits"] is None and motor["within_limits"] is None
    assert report["detectors"] == ["det1"] and report["violations"] == []
    # The simulated motor moves at once and det1 exposes for 0 s.
    assert report["estimated_duration"] == 0.0 and report["duration_unknown"] == []
    # Nothing ran, nothing changed: the item is still queued, no history, no run.
    after = await env.request("status")
    for key in ("items_in_queue", "items_in_history", "plan_queue_uid", "run_list_uid"):
        assert after[key] == before[key], key
    assert after["manager_state"] == "idle"
    assert await position(env, "motor") == 0.0


async def test_a_range_outside_the_motors_limits_is_a_named_violation(env: Client) -> None:
    r = await dry_run(env, item=scan("motor_limited", -2, 8, 11), **TEST_USER)
    assert r["success"], r
    assert r["source"] == "item" and r["item"]["user_group"] == "test_user"
    report = r["report"]
    (motor,) = report["motors"]
    assert motor["name"] == "motor_limited" and motor["limits"] == [-5.0, 5.0]
    assert (motor["min"], motor["max"]) == (-2.0, 8.0) and motor["within_limits"] is False
    (violation,) = report["violations"]
    assert violation["device"] == "motor_limited" and violation["limits"] == [-5.0, 5.0]
    # -2, -1, 0, ..., 8: 6, 7 and 8 are beyond the high limit.
    assert violation["count"] == 3 and violation["values"][0] == 8.0
    assert sorted(violation["values"]) == [6.0, 7.0, 8.0]
    assert "motor_limited" in violation["msg"] and "8 is above the high limit 5" in violation["msg"]
    assert report["num_points"] == 11
    # Within the limits: no violation.
    r = await dry_run(env, item=scan("motor_limited", -5, 5, 3), **USER)
    assert r["success"] and r["report"]["violations"] == [], r
    assert r["report"]["motors"][0]["within_limits"] is True
    assert await position(env, "motor_limited") == 0.0


async def test_an_unknown_plan_or_bad_parameters_get_a_clear_error(env: Client) -> None:
    unknown = {"item_type": "plan", "name": "no_such_plan", "args": [["det1"]]}
    r = await dry_run(env, item=unknown, **USER)
    assert not r["success"] and "no_such_plan" in r["msg"] and r["report"] is None, r
    # The signature refuses a parameter it does not have.
    bad = {**scan("motor", 0, 1, 3), "kwargs": {"num": 3, "speed": 2}}
    r = await dry_run(env, item=bad, **USER)
    assert not r["success"] and "speed" in r["msg"], r
    # A parameter only the plan itself can judge: it fails in the simulation, saying why.
    no_num = {"item_type": "plan", "name": "scan", "args": [["det1"], "motor", 0, 1]}
    r = await dry_run(env, item=no_num, **USER)
    assert not r["success"] and r["msg"].startswith("The plan failed in the dry run: "), r
    assert "num" in r["msg"]
    # A group's forbidden device is refused as an add would refuse it.
    r = await dry_run(env, item=scan("motor1", 0, 1, 2), **TEST_USER)
    assert not r["success"] and "motor1" in r["msg"], r
    # What to simulate must be said once.
    r = await dry_run(env)
    assert not r["success"] and "exactly one of 'uid'" in r["msg"], r
    item = await add(env, scan("motor", 0, 1, 2))
    r = await dry_run(env, uid=item["item_uid"], item=scan("motor", 0, 1, 2), **USER)
    assert not r["success"] and "exactly one of 'uid'" in r["msg"], r
    r = await dry_run(env, uid="no-such-uid")
    assert not r["success"] and "no-such-uid" in r["msg"] and "not in the queue" in r["msg"], r
    r = await dry_run(env, item=scan("motor", 0, 1, 2))
    assert not r["success"] and "user group is not specified" in r["msg"], r
    instruction = {"item_type": "instruction", "name": "queue_stop"}
    r = await dry_run(env, uid=(await add(env, instruction))["item_uid"])
    assert not r["success"] and "Only plans" in r["msg"], r
    # An unknown parameter of the request itself.
    r = await dry_run(env, uid=item["item_uid"], speed=1)
    assert not r["success"] and "speed" in r["msg"], r


async def test_a_dry_run_without_an_open_environment_is_refused_saying_why(
    client: Client,
) -> None:
    item = await add(client, scan("motor", 0, 1, 2))
    r = await dry_run(client, uid=item["item_uid"])
    assert not r["success"] and "environment is not open" in r["msg"], r
    assert r["item"]["item_uid"] == item["item_uid"] and r["report"] is None


@pytest.mark.timeout(240)
async def test_a_dry_run_beside_a_running_plan_leaves_the_plan_alone(env: Client) -> None:
    await add(env, scan("motor", 0, 2, 9))
    long = {"item_type": "plan", "name": "long_count", "args": [["det1"]]}
    running = await add(env, {**long, "kwargs": {"num": 20, "delay": 0.2}}, pos="front")
    assert (await env.request("queue_start"))["success"]
    await until(env, lambda st: st["running_item_uid"] == running["item_uid"])
    # The running item itself, and another plan, while it runs.
    r = await dry_run(env, uid=running["item_uid"])
    assert r["success"] and r["source"] == "running", r
    assert r["report"]["num_points"] == 20 and r["report"]["detectors"] == ["det1"]
    # The delays between shots (shortened by the time the simulation of each shot takes).
    assert r["report"]["estimated_duration"] >= 1.0
    r = await dry_run(env, item=scan("motor_limited", 0, 6, 4), **USER)
    assert r["success"] and r["report"]["violations"][0]["device"] == "motor_limited", r
    st = await until(env, lambda s: s["items_in_queue"] == 0 and idle(s), timeout=180)
    done = (await env.request("history_get"))["items"]
    assert [i["result"]["exit_status"] for i in done] == ["completed", "completed"]
    assert st["items_in_history"] == 2


@pytest.mark.timeout(240)
async def test_a_plan_whose_own_code_never_yields_is_stopped_and_the_next_dry_run_works(
    env: Client,
) -> None:
    script = "def spin_forever():\n    while True:\n        pass\n    yield from bps.null()\n"
    r = await env.request("script_upload", {"script": script})
    assert r["success"], r
    assert (await completed(env, r["task_uid"]))["success"]
    await until(env, idle)
    spin = {"item_type": "plan", "name": "spin_forever"}
    r = await dry_run(env, item=spin, **USER)
    assert not r["success"] and "did not yield a message for over 15 s" in r["msg"], r
    assert "the dry run stopped it" in r["msg"]
    # The thread was stopped: the next dry run is not refused as "in progress".
    r = await dry_run(env, item=scan("motor", 0, 1, 3), **USER)
    assert r["success"] and r["report"]["num_points"] == 3, r


@pytest.mark.skipif("proposal_get" in REQUEST_TYPES, reason="proposals exist: their tests cover it")
async def test_a_proposal_dry_run_says_when_proposals_are_not_available(env: Client) -> None:
    r = await dry_run(env, proposal_uid="some-proposal")
    assert not r["success"] and "Proposals are not available" in r["msg"], r


@pytest.mark.timeout(300)
async def test_in_kernel_mode_a_dry_run_answers_while_a_typed_command_holds_the_kernel(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with kernel_services(nats_server, tmp_path) as services:
        client = services.client
        assert client is not None
        await open_env(client)
        typing = Console(await connection_file(client, tmp_path))
        await typing.prompt()
        # A typed command that says it started, then holds the kernel until released.
        release = tmp_path / "release-typed"
        typing.type(holding(release))
        await typing.shows(b"holding")
        r = await dry_run(client, item=scan("motor_limited", 0, 7, 8), **USER)
        assert r["success"], r
        assert r["report"]["num_points"] == 8 and r["report"]["violations"][0]["count"] == 2
        # It did not wait for the kernel: the typed command still holds it (a foreground
        # task, which needs the kernel, is refused).
        refused = await client.request(
            "function_execute", {"item": func("function_sleep", 0), **TEST_USER}
        )
        assert not refused["success"] and "kernel (RE Worker) is busy" in refused["msg"], refused
        release.touch()
        await typing.leave()
