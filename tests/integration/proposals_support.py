"""A permissions file with a gated group `agent` (ADR 30), and helpers for its tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from qserver.client import Client
from tests.conftest import USER

ROOT = Path(__file__).resolve().parents[2]
AGENT = {"user": "agent1", "user_group": "agent"}
REVIEWER = USER  # a member of `primary`, which is not gated

# The agent may run counts and scans with any device; small counts of the `det` detectors
# are approved at once, everything else waits for a reviewer.
AGENT_GROUP: dict[str, Any] = {
    "allowed_plans": ["count", "scan"],
    "forbidden_plans": [None],
    "allowed_devices": [":?.*:depth=5"],
    "forbidden_devices": [None],
    "allowed_functions": ["function_sleep"],
    "forbidden_functions": [None],
    "proposals": {
        "auto_approve": [
            {
                "plans": ["count"],
                "devices": [":^det\\d?$"],
                "parameters": {"num": {"min": 1, "max": 10}, "delay": {"max": 1}},
            }
        ]
    },
}


def gated_permissions() -> dict[str, Any]:
    """The simulated profile's permissions with the gated group `agent` added."""
    text = (ROOT / "sim_profile" / "user_group_permissions.yaml").read_text()
    perms: dict[str, Any] = yaml.safe_load(text)
    perms["user_groups"]["agent"] = AGENT_GROUP
    return perms


def write_permissions(path: Path) -> Path:
    path.write_text(yaml.safe_dump(gated_permissions()))
    return path


def queue_args(tmp: Path) -> dict[str, list[str]]:
    """`extra` for Services: the queue service reads the gated permissions at every start."""
    return {"queue": ["--permissions-file", str(write_permissions(tmp / "permissions.yaml"))]}


async def eventually(check: Callable[[], Any], timeout: float = 60.0, pause: float = 0.1) -> Any:
    """`await check()` until it returns something true; its last value."""
    async with asyncio.timeout(timeout):
        while True:
            out = await check()
            if out:
                return out
            await asyncio.sleep(pause)


@contextlib.asynccontextmanager
async def proposal_events(client: Client) -> AsyncIterator[list[dict[str, Any]]]:
    """Collect `<prefix>.events.proposals` from now on, in the order they come."""
    seen: list[dict[str, Any]] = []

    async def collect(messages: AsyncIterator[Any]) -> None:
        async for msg in messages:
            seen.append(msgspec.json.decode(msg.data))

    # Subscribed on entry: the caller's next request on this connection comes after it.
    async with client.subscription(client.subjects.proposals_event) as messages:
        task = asyncio.create_task(collect(messages))
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
