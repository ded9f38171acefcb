"""Position rules of the reference server, as pure arithmetic."""

from __future__ import annotations

import pytest
from msgspec import UNSET

from qserver.errors import BadRequest, NotFound
from services.queue.positions import existing_index, insert_index, only_one


@pytest.mark.parametrize(
    ("pos", "size", "expected"),
    [
        (UNSET, 5, 5),
        ("back", 5, 5),
        ("front", 5, 0),
        (0, 5, 0),
        (2, 5, 2),
        (5, 5, 5),
        (99, 5, 5),
        (-1, 5, 4),
        (-5, 5, 0),
        (-99, 5, 0),
        (-1, 0, 0),
        (3, 0, 0),
    ],
)
def test_insert_index_clamps_any_integer(pos: object, size: int, expected: int) -> None:
    assert insert_index(pos, size) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pos", "size", "expected"),
    [("front", 3, 0), ("back", 3, 2), (0, 3, 0), (2, 3, 2), (-1, 3, 2), (-3, 3, 0)],
)
def test_existing_index_names_an_item(pos: object, size: int, expected: int) -> None:
    assert existing_index(pos, size) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("pos", "size"), [(3, 3), (-4, 3), (0, 0), ("front", 0), ("back", 0)])
def test_existing_index_rejects_positions_without_items(pos: object, size: int) -> None:
    with pytest.raises(NotFound):
        existing_index(pos, size)  # type: ignore[arg-type]


def test_only_one_rejects_two_positions() -> None:
    with pytest.raises(BadRequest, match="pos, before_uid"):
        only_one(pos=1, before_uid="x", after_uid=UNSET)
    assert only_one(pos=UNSET, before_uid="x") == "before_uid"
    assert only_one(pos=UNSET) is None
