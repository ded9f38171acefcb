"""A scientist's session with the reference's `REManagerAPI()` over 0MQ, unchanged.

Run by the tests with the Python of .venv-reference (`python zmq_session.py threads|async`);
the bridge's addresses (and public key) come from the reference's own variables
(QSERVER_ZMQ_CONTROL_ADDRESS, QSERVER_ZMQ_INFO_ADDRESS, QSERVER_ZMQ_PUBLIC_KEY). Prints one
JSON object with what it saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bluesky_queueserver_api import BPlan

WAIT = 120  # seconds, for a busy machine


def threads() -> dict[str, Any]:
    from bluesky_queueserver_api.zmq import REManagerAPI

    RM = REManagerAPI()
    RM.console_monitor.enable()
    seen: dict[str, Any] = {"state": RM.status()["manager_state"]}
    added = RM.item_add(BPlan("count", ["det1", "det2"], num=2))
    seen["added_user"] = added["item"]["user"]
    seen["queue"] = [i["name"] for i in RM.queue_get()["items"]]
    seen["allowed"] = "count" in RM.plans_allowed()["plans_allowed"]
    RM.environment_open()
    RM.wait_for_idle(timeout=WAIT)
    seen["env"] = RM.status()["worker_environment_exists"]
    RM.queue_start()
    RM.wait_for_idle(timeout=WAIT)
    seen["history"] = [
        [i["name"], i["result"]["exit_status"], i["user"]] for i in RM.history_get()["items"]
    ]
    RM.environment_close()
    RM.wait_for_idle(timeout=WAIT)
    seen["env_after_close"] = RM.status()["worker_environment_exists"]
    seen["console"] = RM.console_monitor.text()
    RM.console_monitor.disable()
    RM.close()
    return seen


async def async_session() -> dict[str, Any]:
    from bluesky_queueserver_api.zmq.aio import REManagerAPI

    RM = REManagerAPI()
    RM.console_monitor.enable()
    seen: dict[str, Any] = {"state": (await RM.status())["manager_state"]}
    added = await RM.item_add(BPlan("count", ["det1", "det2"], num=2))
    seen["added_user"] = added["item"]["user"]
    seen["queue"] = [i["name"] for i in (await RM.queue_get())["items"]]
    seen["allowed"] = "count" in (await RM.plans_allowed())["plans_allowed"]
    await RM.environment_open()
    await RM.wait_for_idle(timeout=WAIT)
    seen["env"] = (await RM.status())["worker_environment_exists"]
    await RM.queue_start()
    await RM.wait_for_idle(timeout=WAIT)
    seen["history"] = [
        [i["name"], i["result"]["exit_status"], i["user"]]
        for i in (await RM.history_get())["items"]
    ]
    await RM.environment_close()
    await RM.wait_for_idle(timeout=WAIT)
    seen["env_after_close"] = (await RM.status())["worker_environment_exists"]
    seen["console"] = await RM.console_monitor.text()
    RM.console_monitor.disable()
    await RM.close()
    return seen


if __name__ == "__main__":
    result = threads() if sys.argv[1] == "threads" else asyncio.run(async_session())
    print(json.dumps(result))
