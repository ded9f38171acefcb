"""`re_metadata`: which keys of RE.md a client sees, and the reference's texts on failure."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np

from services.worker.env.metadata import filter_md, metadata_reply, permitted_paths

MD: dict[str, Any] = {
    "metadata_key": "metadata_value",
    "scan_id": 3,
    "versions": {"bluesky": "1.14", "ophyd": "1.10"},
    "secret": {"token": "x", "deep": {"a": 1, "b": 2}},
}


def test_the_default_permits_everything() -> None:
    assert permitted_paths("/") == {()}
    assert filter_md(MD, permitted_paths("/")) == MD
    assert filter_md(MD, permitted_paths("/:/scan_id")) == MD


def test_a_path_permits_its_key_with_all_below_it_and_nothing_else() -> None:
    assert filter_md(MD, permitted_paths("/metadata_key")) == {"metadata_key": "metadata_value"}
    assert filter_md(MD, permitted_paths("/versions/")) == {"versions": MD["versions"]}
    got = filter_md(MD, permitted_paths("/metadata_key:/versions/bluesky:/secret/deep/b"))
    assert got == {
        "metadata_key": "metadata_value",
        "versions": {"bluesky": "1.14"},
        "secret": {"deep": {"b": 2}},
    }
    assert filter_md(MD, permitted_paths("/non_existent_key")) == {}
    assert filter_md(MD, permitted_paths("/scan_id/below")) == {}  # not a mapping


class RE:
    def __init__(self, md: Any) -> None:
        self.md = md


def test_the_reply_is_json_and_failures_say_what_the_reference_says() -> None:
    values = {"arr": np.arange(3), "when": datetime.datetime(2024, 1, 2, 3, 4, 5), "n": 1}
    reply = metadata_reply(RE(values), "/")
    assert reply.success and reply.re_metadata == {
        "arr": [0, 1, 2],
        "when": "2024-01-02T03:04:05",
        "n": 1,
    }
    assert metadata_reply(RE(values), "/n").re_metadata == {"n": 1}
    reply = metadata_reply(None, "/")
    assert not reply.success and reply.msg == "Run Engine does not exist in worker environment"
    no_md = object()
    reply = metadata_reply(no_md, "/")
    assert "Run Engine does not have a metadata attribute" in reply.msg
    reply = metadata_reply(RE(12345), "/")
    assert reply.msg.startswith("Failed to convert Run Engine metadata to dictionary")
    reply = metadata_reply(RE({"f": object()}), "/")
    assert reply.msg.startswith("Failed to serialize RE metadata with JSON:") and not reply.success
