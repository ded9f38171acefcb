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


class QuickNats(SlowNats):
    async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
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


async def test_a_flush_leaves_the_publishing_task_asleep_and_later_lines_still_go_out() -> None:
    """As a service's console (`ServiceConsole`): lines written on the loop's own thread."""
    import threading

    loop = asyncio.get_running_loop()
    publisher = ConsolePublisher("p.events.console", loop.call_soon, threading.get_ident())
    nc = QuickNats()  # as nats.py's publish: it buffers, it does not wait
    task = loop.create_task(publisher.run(nc))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0)  # the task waits for a wake-up
        publisher.sink.add("flushed\n")
        await publisher.send(nc)  # type: ignore[arg-type]
        # What woke the task was sent by the flush: no wake-up is left for it.
        assert not publisher._wake.is_set()
        assert nc.sent == ["flushed\n"]
        publisher.sink.add("later\n")  # no flush: the task sends it
        for _ in range(100):
            if len(nc.sent) == 2:
                break
            await asyncio.sleep(0)
        assert nc.sent == ["flushed\n", "later\n"]
    finally:
        task.cancel()


def test_a_request_line_reads_as_the_log_record_it_replaces() -> None:
    """`info_line` prints what `logging.Formatter(LOG_FORMAT)` printed for the INFO record."""
    import logging

    from services.runtime.console import MANAGER_LOGGER, info_line

    text = "Item added: success=True item_type='plan' name='count' qsize=1."
    for at in (1764757198.0, 1764757198.123456, 1764757198.9999):
        record = logging.LogRecord(MANAGER_LOGGER, logging.INFO, __file__, 1, text, None, None)
        record.created = at
        record.msecs = int((at - int(at)) * 1000) + 0.0
        expected = logging.Formatter(console.LOG_FORMAT).format(record) + "\n"
        assert info_line(MANAGER_LOGGER, text, at) == expected
