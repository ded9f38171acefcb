"""Large replies held by the process that made them until the client fetched every part.

Pure bookkeeping, no NATS: `serve_method` holds a reply that does not fit in one message
and answers each part request from here (ADR 8). Memory is bounded twice: a reply is
dropped when its last part was sent or when no part was asked for `hold_s` seconds, and
a new reply that would take the total above `max_bytes` is refused with a clear error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from qserver.errors import NotFound, Refused
from qserver.protocol.reply_parts import count_parts

HOLD_S = 30.0
MAX_HELD_BYTES = 512 * 1024 * 1024


@dataclass
class Held:
    method: str
    data: bytes
    part: int
    parts: int
    last_used: float
    sent: set[int] = field(default_factory=set)


class HeldReplies:
    """The large replies of one process, by token; tokens start with this process's id."""

    def __init__(
        self,
        *,
        hold_s: float = HOLD_S,
        max_bytes: int = MAX_HELD_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hold_s = hold_s
        self.max_bytes = max_bytes
        self.clock = clock
        # Another process answering the same subject (a hung former queue leader) sees the
        # part requests too; it recognises tokens that are not its own and stays silent.
        self.holder = uuid.uuid4().hex[:12]
        self._held: dict[str, Held] = {}

    @property
    def held_bytes(self) -> int:
        return sum(len(h.data) for h in self._held.values())

    def owns(self, token: str) -> bool:
        return token.startswith(self.holder + "-")

    def hold(self, method: str, data: bytes, part: int) -> tuple[str, int]:
        """Keep `data` for fetching in parts of `part` bytes; return (token, number of parts)."""
        self.expire()
        if self.held_bytes + len(data) > self.max_bytes:
            raise Refused(
                f"The reply to '{method}' ({len(data):,} bytes) cannot be held now: this service "
                f"already holds {self.held_bytes:,} bytes of large replies that clients are "
                f"fetching (the limit is {self.max_bytes:,}); try again in a moment"
            )
        token = f"{self.holder}-{uuid.uuid4().hex}"
        parts = count_parts(len(data), part)
        self._held[token] = Held(method, data, part, parts, self.clock())
        return token, parts

    def part(self, method: str, token: str, index: int) -> bytes:
        """Part `index` of the held reply `token` to `method`; dropped once all were sent."""
        self.expire()
        held = self._held.get(token)
        if held is None or held.method != method:
            raise NotFound(
                f"The reply to '{method}' is no longer held (a reply is kept {self.hold_s:g} s "
                "after its last part was asked for): send the request again"
            )
        if not 0 <= index < held.parts:
            raise NotFound(f"The reply to '{method}' has parts 0 to {held.parts - 1}, not {index}")
        held.last_used = self.clock()
        held.sent.add(index)
        if len(held.sent) == held.parts:
            del self._held[token]
        return held.data[index * held.part : (index + 1) * held.part]

    def expire(self) -> None:
        """Drop the replies nobody asked a part of for `hold_s` seconds."""
        now = self.clock()
        for token in [t for t, h in self._held.items() if now - h.last_used > self.hold_s]:
            del self._held[token]
