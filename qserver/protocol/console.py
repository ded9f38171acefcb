"""Console output on `<prefix>.events.console`: what the server's processes print.

Each message is the reference's `{time, msg}` (JSON): `msg` is text exactly as written,
newlines, carriage returns and cursor-up sequences included (progress bars redraw with
them), so a message may hold part of a line or several lines. Each carries a uid in the
`Qs-Console-Uid` header: the same uid in the live event and in the backlog, so a reader
that gets both can tell what it already has. The stream `QS_<PREFIX>_CONSOLE` keeps the
recent messages (ADR 18).
"""

from __future__ import annotations

import time

import msgspec

from qserver.uids import uid as new_uid

UID_HEADER = "Qs-Console-Uid"
# Longer texts go out as several messages: the JSON of this many characters stays far below
# a NATS message (1 MiB) even when every character is an escaped control character.
MAX_MSG_CHARS = 16_384
# The reference's log line (bluesky_queueserver.manager.logging_setup), which its users read.
LOG_FORMAT = "[%(levelname)1.1s %(asctime)s %(name)s] %(message)s"

# What the console stream keeps by default: the newest messages within all three bounds.
DEFAULT_MAX_MSGS = 10_000
DEFAULT_MAX_MIB = 16.0
DEFAULT_MAX_AGE_DAYS = 7.0


class ConsoleMsg(msgspec.Struct, frozen=True, kw_only=True):
    """One console message, as the reference publishes it."""

    time: float  # when it was written (Unix time)
    msg: str  # the text as written


_decoder = msgspec.json.Decoder(ConsoleMsg)
_encoder = msgspec.json.Encoder()


def split_text(text: str, limit: int = MAX_MSG_CHARS) -> list[str]:
    """`text` in pieces of at most `limit` characters (one piece if it fits)."""
    if len(text) <= limit:
        return [text]
    return [text[i : i + limit] for i in range(0, len(text), limit)]


def encode(
    text: str, at: float | None = None, uid: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one console message."""
    body = _encoder.encode(ConsoleMsg(time=time.time() if at is None else at, msg=text))
    return body, {UID_HEADER: uid or new_uid()}


def decode(data: bytes) -> ConsoleMsg:
    """A console message; msgspec.DecodeError or ValidationError if it is not one."""
    return _decoder.decode(data)
