"""The web page's TypeScript types name only fields the wire types have (ADR 26).

A field renamed or removed in `qserver/protocol/` then fails here, not at the beamline.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from qserver.protocol.items import HistoryResult, LockInfo, PlanQueueMode, QueueItem
from qserver.protocol.status import LockStatus, Status

TYPES = Path(__file__).resolve().parents[2] / "webui" / "src" / "types.ts"
# Fields of other helpers' shapes (ADR 25), not yet in this branch's Status, if any.
LATER = {"Status": {"progress"}}


def ts_fields(interface: str) -> set[str]:
    text = TYPES.read_text()
    m = re.search(rf"export interface {interface} \{{(.*?)\n\}}", text, re.S)
    assert m, f"no interface {interface} in {TYPES}"
    return set(re.findall(r"^\s+(\w+)\??:", m.group(1), re.M))


@pytest.mark.parametrize(
    ("interface", "struct"),
    [
        ("Status", Status),
        ("QueueMode", PlanQueueMode),
        ("LockStatus", LockStatus),
        ("HistoryResult", HistoryResult),
        ("Item", QueueItem),
        ("LockInfo", LockInfo),
    ],
)
def test_the_pages_types_name_fields_the_wire_has(interface: str, struct: type) -> None:
    wire = {f.name for f in msgspec.structs.fields(struct)}
    extra = {"result"} if interface == "Item" else set()  # history items carry their result
    unknown = ts_fields(interface) - wire - extra - LATER.get(interface, set())
    assert not unknown, f"webui/src/types.ts {interface} has fields the wire has not: {unknown}"
