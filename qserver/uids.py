"""Uids of items, statuses, queue versions and console messages: random version-4 UUIDs.

As `str(uuid.uuid4())` prints them, but from the `random` module's generator (seeded from
the OS at start, reseeded in a forked child) instead of a `getrandom` call and a `UUID`
object each: a `queue_item_add` takes several, and each `uuid4` cost more than the rest of
the item's bookkeeping. 122 random bits keep them unique; they are not secrets and nothing
uses them as one (tokens, keys and leases take `uuid.uuid4`/`secrets`).
"""

from __future__ import annotations

import random

# Version 4 (bits 76-79 = 0100) and the RFC 4122 variant (bits 62-63 = 10).
_KEEP = ((1 << 128) - 1) & ~(0xF << 76) & ~(0x3 << 62)
_SET = (0x4 << 76) | (0x2 << 62)
_bits = random.getrandbits


def uid() -> str:
    """A new random uid, `xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`."""
    h = f"{(_bits(128) & _KEEP) | _SET:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
