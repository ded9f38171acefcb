"""RE.md kept in a store: the rules of `PersistentMetadata`, against an in-memory store."""

from __future__ import annotations

import copy
import threading
from typing import Any

import msgspec
import pytest

from services.worker.env.metadata import (
    Conflict,
    PersistentMetadata,
    decode_md,
    encode_md,
    merge_startup,
)


class Store:
    """A compare-and-set store of one value, as the KV bucket behaves."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.data = msgspec.json.encode(values) if values is not None else None
        self.revision = 1 if values is not None else 0
        self.writes = 0

    def read(self) -> tuple[dict[str, Any], int]:
        return decode_md(self.data), self.revision

    def write(self, data: bytes, revision: int) -> int:
        if revision != self.revision:
            raise Conflict
        self.data, self.revision = data, self.revision + 1
        self.writes += 1
        return self.revision

    def values(self) -> dict[str, Any]:
        return decode_md(self.data)


def md_on(store: Store, inner: dict[str, Any] | None = None) -> PersistentMetadata:
    values, revision = store.read()
    return PersistentMetadata(values, revision, store.read, store.write, inner)


def test_every_change_is_stored_before_it_returns() -> None:
    store = Store()
    md = md_on(store)
    md["scan_id"] = 1
    md["beamline_id"] = "tst"
    assert store.values() == {"scan_id": 1, "beamline_id": "tst"}
    del md["beamline_id"]
    assert store.values() == {"scan_id": 1} and dict(md) == {"scan_id": 1}
    with pytest.raises(KeyError):
        del md["nothing"]


def test_a_scan_id_taken_by_another_writer_is_never_handed_out_again() -> None:
    store = Store({"scan_id": 5})
    ours, theirs = md_on(store), md_on(store)
    theirs["scan_id"] = 6  # an environment thought dead went on
    ours["scan_id"] = 6  # what the RunEngine computes from its own (old) value
    assert ours["scan_id"] == 7 and store.values()["scan_id"] == 7


def test_other_changes_after_a_conflict_keep_the_other_writers_values() -> None:
    store = Store({"a": 1})
    ours, theirs = md_on(store), md_on(store)
    theirs["b"] = 2
    ours["c"] = 3
    assert store.values() == {"a": 1, "b": 2, "c": 3} == dict(ours)


def test_the_startup_code_wins_except_that_scan_id_never_goes_back() -> None:
    stored = {"scan_id": 41, "proposal": "old", "kept": True}
    startup = {"scan_id": 0, "proposal": "new", "versions": {"bluesky": "x"}}
    assert merge_startup(stored, startup) == {
        "scan_id": 41,
        "proposal": "new",
        "kept": True,
        "versions": {"bluesky": "x"},
    }
    assert merge_startup({"scan_id": 3}, {"scan_id": 9})["scan_id"] == 9


def test_values_that_are_not_json_stay_in_memory_only() -> None:
    store = Store()
    md = md_on(store)
    lock = threading.Lock()
    md["lock"] = lock
    md["scan_id"] = 2
    assert md["lock"] is lock and store.values() == {"scan_id": 2}
    assert encode_md({"x": 1, "y": object()}) == b'{"x":1}'


def test_copies_are_plain_dicts_and_the_startup_mapping_follows() -> None:
    inner: dict[str, Any] = {"versions": {}}
    md = md_on(Store(), inner)
    md["scan_id"] = 1
    md["versions"] = {"bluesky": "1"}
    assert inner == {"versions": {"bluesky": "1"}, "scan_id": 1}
    deep = copy.deepcopy(md)
    assert type(deep) is dict and deep == dict(md)
    deep["versions"]["bluesky"] = "changed"
    assert md["versions"] == {"bluesky": "1"}
    assert type(copy.copy(md)) is dict
