"""A client's copy of the pushed status: `status` answered without a round trip (ADR 29).

The queue service publishes its status on every change, before it answers the request that
made the change, and at least every `Qs-Status-Every` seconds without one. It numbers the
statuses (`Qs-Status-Seq`, `<epoch>:<n>`) and puts the number of the last one published on
each of its replies. A client that follows the events keeps the last one and answers
`status` from it only while both hold:

- fresh: it came less than `every + FRESH_MARGIN_S` seconds ago (the queue service is alive
  and the subscription delivers);
- current: its number is at least the highest number this client saw on a reply, in the same
  epoch (every change this client was told about is in it: read-your-writes), and no write
  was answered by a service that does not number statuses since the last direct `status`
  (`history_clear`, whose news reaches the queue service from the history service).

Otherwise `status` is asked of the queue service as before, and its reply (numbered too)
is taken as the copy. Nothing here depends on the order in which the client library hands
the event and the reply over: a late event only sends one `status` the long way.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from typing import Any

from qserver.protocol.methods import READ_ONLY_METHODS
from qserver.protocol.status import (
    STATUS_EVERY_HEADER,
    STATUS_SEQ_HEADER,
    parse_status_seq,
)

# How long past its announced period a status event is trusted (delivery, a busy loop).
FRESH_MARGIN_S = 0.5
# The period assumed when an event does not announce one.
DEFAULT_EVERY_S = 1.0
# Methods that change nothing: their replies, numbered or not, leave the copy usable.
READ_METHODS = frozenset(READ_ONLY_METHODS) | {
    "config_get",
    "re_metadata",
    "proposal_list",
    "proposal_get",
    "proposal_gate",
    "item_dry_run",
}
Seq = tuple[str, int]
# When nats-server stored a message (RFC 3339, UTC, nanoseconds), on a direct get's answer.
STORED_TIME_HEADER = "Nats-Time-Stamp"


def stored_time(value: str | None) -> float | None:
    """`Nats-Time-Stamp` as seconds since the epoch; None if absent or malformed."""
    if not value or not value.endswith("Z"):
        return None
    whole, _, fraction = value[:-1].partition(".")
    try:
        t = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
        return t + (float("0." + fraction) if fraction else 0.0)
    except ValueError:
        return None


def announced_every(headers: Mapping[str, str]) -> float:
    """The status period an event announces (`Qs-Status-Every`), or the default."""
    try:
        return float(headers.get(STATUS_EVERY_HEADER) or DEFAULT_EVERY_S)
    except ValueError:
        return DEFAULT_EVERY_S


class StatusMirror:
    """The last status event (raw JSON) with its number, and what this client must see."""

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.seq: Seq | None = None
        self.every = DEFAULT_EVERY_S
        self._until = 0.0  # monotonic time after which the copy is not fresh
        self.needed: Seq | None = None  # the highest number seen on a reply
        self._blind = False  # a write was answered by a service that does not number
        self.hits = 0  # requests answered from the copy (for tests and benchmarks)

    def on_event(self, data: bytes, headers: Mapping[str, str] | None) -> None:
        """A status event arrived: keep it if it is numbered and not older than the copy."""
        h = headers or {}
        seq = parse_status_seq(h.get(STATUS_SEQ_HEADER))
        if seq is None:
            return  # a queue service without numbers (older): never answered from
        every = announced_every(h)
        if self.seq is not None and seq[0] == self.seq[0] and seq[1] < self.seq[1]:
            return
        self.data, self.seq, self.every = data, seq, every
        self._until = time.monotonic() + every + FRESH_MARGIN_S

    def current(self) -> bytes | None:
        """The copy, if it is fresh and shows every change this client was told about."""
        if self.data is None or self._blind or time.monotonic() > self._until:
            return None
        need, have = self.needed, self.seq
        if need is not None and (have is None or have[0] != need[0] or have[1] < need[1]):
            return None
        self.hits += 1
        return self.data

    def accepts(self, headers: Mapping[str, str] | None) -> bool:
        """Whether a status kept elsewhere (nats-server's, ADR 35) is current: numbered, and
        showing every change this client was told about. Freshness is `on_stored`'s."""
        seq = parse_status_seq((headers or {}).get(STATUS_SEQ_HEADER))
        if seq is None or self._blind:
            return False
        need = self.needed
        return need is None or (seq[0] == need[0] and seq[1] >= need[1])

    def on_stored(self, headers: Mapping[str, str] | None, now: float | None = None) -> bool:
        """Whether nats-server's copy of the last status event may answer `status` (ADR 35):
        it is fresh by its stored time (younger than its period + the margin, as an event a
        follower trusts) and current (`accepts`)."""
        h = headers or {}
        stored = stored_time(h.get(STORED_TIME_HEADER))
        if stored is None:
            return False
        age = (time.time() if now is None else now) - stored
        return age <= announced_every(h) + FRESH_MARGIN_S and self.accepts(h)

    def on_reply(self, method: str, data: bytes, headers: Mapping[str, str] | None) -> None:
        """Note a reply's number; a direct `status` reply becomes the copy."""
        seq = parse_status_seq((headers or {}).get(STATUS_SEQ_HEADER))
        if seq is None:
            if method not in READ_METHODS:
                self._blind = True
            return
        if self.needed is None or seq[0] != self.needed[0] or seq[1] > self.needed[1]:
            self.needed = seq
        if method in ("status", "ping"):
            self._blind = False
            self._until = time.monotonic() + self.every + FRESH_MARGIN_S
            if self.seq is None or seq[0] != self.seq[0] or seq[1] >= self.seq[1]:
                self.data, self.seq = data, seq

    def forget(self) -> None:
        """Nothing kept is trusted any more (the connection was lost)."""
        self._until = 0.0

    def describe(self) -> dict[str, Any]:
        return {"seq": self.seq, "needed": self.needed, "hits": self.hits}
