"""Messages on their way into the document stream, in order, until the stream has each one.

Pure bookkeeping, no I/O (the journal does the publishing). Messages are published without
waiting for each acknowledgement, up to a window. Each names its predecessor in
`Nats-Expected-Last-Msg-Id`, so the stream stores a message only right after the one before
it: a message lost on the way (a connection that dropped, a leader that changed) cannot
let later ones be stored ahead of it. The stream then refuses the later ones and says which
message it has last; the publisher goes on from the one after that. After a timeout it
sends again from the oldest unacknowledged message, and `Nats-Msg-Id` makes the stream
drop a copy of one it already has.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

# The stream's error when Nats-Expected-Last-Msg-Id does not match, with its last id.
WRONG_LAST_ID = 10070
_WRONG_LAST_RE = re.compile(r"wrong last msg ID: ?(\S*)")
RETRY_S = 0.25
RETRY_MAX_S = 5.0


@dataclass
class Part:
    """One message: a whole document, or one part of a large one."""

    n: int  # this publisher's message number, from 1
    doc: int  # the document's number, from 1
    subject: str
    data: bytes
    part: str  # "" or "<part>/<parts>"
    expect: str | None  # the message id the stream must have last, None: no condition
    run: str = ""  # the run's uid when the subject cannot carry it (see `run_token`)
    added_at: float = 0.0  # when it came into the outbox (monotonic)
    stored: bool = False


class Outbox:
    """The unacknowledged messages of one publisher, and what to send next."""

    def __init__(self, publisher: str, window: int = 256, ack_timeout: float = 5.0) -> None:
        self.publisher = publisher
        self.window = window
        self.ack_timeout = ack_timeout
        self.epoch = 0  # replies to messages sent in an older epoch carry no news but acks
        self.parts: deque[Part] = deque()
        self.bytes = 0  # of the messages not yet stored
        self.stored_docs = 0  # documents whose every part is stored
        self.resends = 0
        self.last_error = ""
        self._n = 0
        self._inflight: dict[int, float] = {}  # message number -> when sent (this epoch)
        self._next = 1  # the next message number to send
        self._retry_at = 0.0
        self._errors = 0  # refusals in a row, for the back-off

    def msg_id(self, n: int) -> str:
        return f"{self.publisher}.{n}"

    # ----- in -----

    def add(
        self, doc: int, subject: str, datas: list[bytes], run: str = "", now: float = 0.0
    ) -> None:
        """A document's message(s), after every document added before it."""
        count = len(datas)
        for i, data in enumerate(datas, 1):
            self._n += 1
            expect = self.msg_id(self._n - 1) if self._n > 1 else None
            part = f"{i}/{count}" if count > 1 else ""
            self.parts.append(Part(self._n, doc, subject, data, part, expect, run, now))
            self.bytes += len(data)

    @property
    def unstored(self) -> int:
        return len(self.parts)

    def stored_through(self, doc: int) -> bool:
        """Whether every message of documents up to `doc` is stored."""
        return not self.parts or self.parts[0].doc > doc

    # ----- out -----

    def to_send(self, now: float) -> list[Part]:
        """The messages to publish now, in order (each marked sent)."""
        if now < self._retry_at or not self.parts:
            return []
        out: list[Part] = []
        first = self.parts[0].n
        while len(self._inflight) < self.window:
            i = self._next - first
            if i >= len(self.parts):
                break
            part = self.parts[i]
            self._next += 1
            if part.stored:
                continue
            self._inflight[part.n] = now
            out.append(part)
        return out

    def check(self, now: float) -> None:
        """Send again from the oldest unacknowledged message if one waited too long."""
        if self._inflight and now - min(self._inflight.values()) > self.ack_timeout:
            self.last_error = f"no acknowledgement within {self.ack_timeout:g} s"
            self._resync(now, delay=0.0)

    def disconnected(self, now: float) -> None:
        """What was in flight is lost or stored; it is sent again once connected."""
        if self._inflight:
            self._resync(now, delay=0.0)

    def on_reply(self, epoch: int, n: int, reply: dict[str, Any], now: float) -> None:
        """The stream's answer to message `n` sent in `epoch`."""
        error = reply.get("error")
        if not error and reply.get("seq"):
            self._errors = 0
            self._stored(n)
            return
        if epoch != self.epoch:
            return  # refused as part of an epoch already given up
        self._inflight.pop(n, None)
        description = str(error.get("description", "")) if isinstance(error, dict) else ""
        code = error.get("err_code") if isinstance(error, dict) else None
        self.last_error = description or str(error or reply)
        if code == WRONG_LAST_ID and (m := _WRONG_LAST_RE.search(description)):
            self._resync(now, delay=0.0, last_id=m.group(1))
        else:  # the stream is missing, full, electing a leader...: back off
            self._errors += 1
            self._resync(now, delay=min(RETRY_S * 2 ** (self._errors - 1), RETRY_MAX_S))

    # ----- inside -----

    def _stored(self, n: int) -> None:
        self._inflight.pop(n, None)
        if not self.parts or n < self.parts[0].n:
            return
        i = n - self.parts[0].n
        if i < len(self.parts):
            self.parts[i].stored = True
        self._pop_stored()

    def _pop_stored(self) -> None:
        while self.parts and self.parts[0].stored:
            part = self.parts.popleft()
            self.bytes -= len(part.data)
            if not part.part or part.part.split("/")[0] == part.part.split("/")[1]:
                self.stored_docs = max(self.stored_docs, part.doc)

    def _resync(self, now: float, delay: float, last_id: str | None = None) -> None:
        """Start a new epoch: send again from the first message the stream may not have."""
        self.epoch += 1
        self.resends += 1
        self._inflight.clear()
        self._retry_at = now + delay
        if last_id is not None:
            if self.parts and last_id.startswith(self.publisher + "."):
                # The stream has ours up to `last_id`: all before it too (each followed the last).
                upto = int(last_id.rsplit(".", 1)[1])
                for part in self.parts:
                    if part.n > upto:
                        break
                    part.stored = True
                self._pop_stored()
            if self.parts:
                self.parts[0].expect = last_id or None
        self._next = self.parts[0].n if self.parts else self._n + 1
