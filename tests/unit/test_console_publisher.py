"""The console publisher: a flush beside the publishing task keeps the messages' order."""

from __future__ import annotations

import asyncio
from typing import Any

from qserver.protocol import console
from services.runtime.console import ConsolePublisher


class SlowNats:
    """Records what is published; each publish lets other tasks run, as a full buffer does."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
        await asyncio.sleep(0)
        self.sent.append(console.decode(data).msg)


async def test_a_flush_waits_for_the_publishing_task_and_nothing_is_sent_twice() -> None:
    loop = asyncio.get_running_loop()
    publisher = ConsolePublisher("p.events.console", loop.call_soon)
    nc = SlowNats()
    task = loop.create_task(publisher.run(nc))  # type: ignore[arg-type]
    try:
        for i in range(5):
            publisher.sink.add(f"first {i}\n")
        await asyncio.sleep(0)  # the task takes the five and is sending them
        await asyncio.sleep(0)
        publisher.sink.add("last\n")
        await publisher.send(nc)  # type: ignore[arg-type]
        # The flush returns once everything added before it is out, in order.
        assert nc.sent == [*(f"first {i}\n" for i in range(5)), "last\n"]
    finally:
        task.cancel()
