"""`qserver.uids.uid`: what `str(uuid.uuid4())` prints, and never the same twice."""

from __future__ import annotations

import uuid

from qserver.uids import uid


def test_a_uid_is_a_version_4_uuid_as_uuid4_prints_it() -> None:
    for _ in range(2000):
        text = uid()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower case, dashes where uuid4's are


def test_uids_do_not_repeat_and_use_all_their_random_digits() -> None:
    many = [uid() for _ in range(20000)]
    assert len(set(many)) == len(many)
    # Every random hex position takes many values (none is stuck at a constant).
    digits = [i for i, ch in enumerate(many[0]) if ch != "-" and i not in (14, 19)]
    for i in digits:
        assert len({u[i] for u in many}) == 16, i
    assert {u[19] for u in many} == set("89ab")
