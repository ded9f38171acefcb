"""Replies larger than one NATS message: announced, then fetched part by part (ADR 8).

A reply that fits in one message (the server's `max_payload`, 1 MiB by default) is sent
as it always was: one message, no headers. A larger one is encoded once and held by the
process that made it; its first message is an announcement, a complete JSON failure for
clients that do not know this protocol (the `nats` CLI shows a clear message), with the
headers below. A client that knows it then requests each part on the same API subject,
the request carrying the token and the part's index; each part comes back as one message.
Every step is an ordinary request with one reply, so the requester paces the transfer
(a slow client is never cut off as a NATS slow consumer) and no permission beyond those
of the original request is needed.
"""

from __future__ import annotations

# On the announcement: the token naming the held reply, its length and number of parts.
TOKEN_HEADER = "Qs-Reply-Token"
SIZE_HEADER = "Qs-Reply-Size"
PARTS_HEADER = "Qs-Reply-Parts"
# On a part request (with TOKEN_HEADER) and on the part sent back: the part's index.
PART_HEADER = "Qs-Reply-Part"
# Room left in each message for the headers (a part is max_payload minus this).
HEADER_ROOM = 1024


def part_size(max_payload: int) -> int:
    """The payload of each part for a server with this `max_payload`."""
    return max(max_payload - HEADER_ROOM, 1)


def count_parts(size: int, part: int) -> int:
    return max((size + part - 1) // part, 1)


def announcement(method: str, size: int, parts: int, max_payload: int) -> str:
    """The text of the announcement's `msg`, for clients that only read its body."""
    return (
        f"The reply to '{method}' is {size:,} bytes, more than one NATS message holds "
        f"({max_payload:,} bytes): it is sent in {parts} parts that a client fetches with "
        f"the '{TOKEN_HEADER}' header (the qserver client and the HTTP gateway do this)"
    )
