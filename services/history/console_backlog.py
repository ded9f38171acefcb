"""The recent console output: messages to poll from, and the text a terminal would show.

Pure logic, fed in stream order by `console.py`. Positions are the console stream's
sequence numbers, so every holder of the same stream gives the same answers: the uid a
poller sends back (`last_msg_uid`) encodes a position, and stays valid when this service
restarts or another instance answers.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

# As bluesky-httpserver: the messages kept to poll from, and the text's lines (the
# `console_monitor_max_lines` default of bluesky-queueserver-api, which it renders with).
MAX_MSGS = 2000
MAX_LINES = 1000
# Bound on what the messages hold: 2000 messages of 16 Ki characters would be 32 Mi.
MAX_CHARS = 4 * 2**20

NEW_LINE, CR, UP = "\n", "\r", "\x1b[A"
_POSITION_BITS = 48
_NAMESPACE = uuid.UUID("5f0c2a4e-8a52-4f0e-9d8e-6b1f3c0d7a21")


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int  # in the console stream
    uid: str  # the publisher's (`Qs-Console-Uid`), or one made from the position
    time: float
    msg: str


class ConsoleText:
    """Console text rendered as a terminal would: `\\n`, `\\r` and ESC[A (cursor up) applied.

    Progress bars redraw their lines with carriage returns and cursor-up sequences; the text
    shows their last state. At most `max_lines` lines are kept.
    """

    def __init__(self, max_lines: int = MAX_LINES) -> None:
        self.max_lines = max_lines
        self.lines: list[str] = []
        self.row = 0
        self.col = 0

    def feed(self, text: str) -> None:
        while text:
            if not self.lines:
                self.lines, self.row, self.col = [""], 0, 0
            cuts = [i for i in (text.find(NEW_LINE), text.find(CR), text.find(UP)) if i >= 0]
            end = min(cuts) if cuts else len(text)
            if end:
                self._write(text[:end])
                text = text[end:]
            elif text.startswith(NEW_LINE):
                self.row += 1
                if self.row == len(self.lines):
                    self.lines.append("")
                self.col = 0
                text = text[1:]
            elif text.startswith(CR):
                self.col = 0
                text = text[1:]
            else:  # cursor up: the column stays
                self.row = max(self.row - 1, 0)
                text = text[len(UP) :]
        self._trim()

    def _write(self, chunk: str) -> None:
        line = self.lines[self.row].ljust(self.col)
        self.lines[self.row] = line[: self.col] + chunk + line[self.col + len(chunk) :]
        self.col += len(chunk)

    def _trim(self) -> None:
        # An empty last line (the cursor after a newline) is not counted.
        keep = self.max_lines + (1 if self.lines and self.lines[-1] == "" else 0)
        extra = len(self.lines) - keep
        if extra > 0:
            del self.lines[:extra]
            self.row = max(self.row - extra, 0)

    def text(self, nlines: int) -> str:
        """The last `nlines` lines, joined by newlines (no newline at the end); "" for <= 0."""
        lines = self.lines[:-1] if self.lines and self.lines[-1] == "" else self.lines
        if nlines <= 0 or not lines:
            return ""
        return "\n".join(lines[-nlines:])


class ConsoleBacklog:
    """The last messages of one console stream, and their text."""

    def __init__(
        self,
        identity: str = "",
        *,
        max_msgs: int = MAX_MSGS,
        max_chars: int = MAX_CHARS,
        max_lines: int = MAX_LINES,
    ) -> None:
        self.max_msgs = max_msgs
        self.max_chars = max_chars
        self.max_lines = max_lines
        self.entries: deque[Entry] = deque()
        self.chars = 0
        self.last_seq = 0
        self.identity = identity
        self.rendered = ConsoleText(max_lines)
        self._key = self._identity_key(identity)

    def reset(self, identity: str, last_seq: int) -> None:
        """Start over for a stream (`identity`: its name and creation time) at `last_seq`."""
        self.entries.clear()
        self.chars = 0
        self.last_seq = last_seq
        self.identity = identity
        self.rendered = ConsoleText(self.max_lines)
        self._key = self._identity_key(identity)

    def add(self, seq: int, uid: str | None, time: float, msg: str) -> None:
        if seq <= self.last_seq:
            return  # seen already (a consumer that started again)
        self.last_seq = seq
        self.entries.append(Entry(seq, uid or self.position_uid(seq), time, msg))
        self.chars += len(msg)
        while len(self.entries) > self.max_msgs or (
            self.chars > self.max_chars and len(self.entries) > 1
        ):
            self.chars -= len(self.entries.popleft().msg)
        self.rendered.feed(msg)

    # ----- uids -----

    @staticmethod
    def _identity_key(identity: str) -> int:
        """The high bits every position uid of this stream shares."""
        high = uuid.uuid5(_NAMESPACE, identity).int
        return high >> _POSITION_BITS << _POSITION_BITS

    def position_uid(self, seq: int) -> str:
        """A uid that means "after message `seq`" in this stream (a UUID, as the reference's)."""
        return str(uuid.UUID(int=self._key | (seq & ((1 << _POSITION_BITS) - 1))))

    def position_of(self, uid: str) -> int | None:
        """The position a uid of `position_uid` names; None for any other uid."""
        try:
            value = uuid.UUID(uid).int
        except ValueError:
            return None
        if value >> _POSITION_BITS << _POSITION_BITS != self._key:
            return None
        return value & ((1 << _POSITION_BITS) - 1)

    @property
    def last_msg_uid(self) -> str:
        return self.position_uid(self.last_seq)

    @property
    def text_uid(self) -> str:
        """Changes whenever the text does (a message arrives), the same for every holder."""
        return str(uuid.uuid5(_NAMESPACE, f"text:{self.identity}:{self.last_seq}"))

    # ----- queries -----

    def since(self, last_msg_uid: str, with_uids: bool = False) -> list[dict[str, Any]]:
        """The messages after `last_msg_uid`: all for "ALL"; none for a uid it did not give.

        A position older than what is kept gets everything kept: as much as can be had.
        """
        if last_msg_uid == "ALL":
            after = 0
        else:
            pos = self.position_of(last_msg_uid)
            if pos is None:
                return []
            after = pos
        out: list[dict[str, Any]] = []
        for e in reversed(self.entries):
            if e.seq <= after:
                break
            out.append(
                {"time": e.time, "msg": e.msg, "uid": e.uid}
                if with_uids
                else {"time": e.time, "msg": e.msg}
            )
        out.reverse()
        return out

    def text(self, nlines: int) -> str:
        return self.rendered.text(nlines)
