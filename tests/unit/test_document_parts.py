"""Documents larger than a NATS message travel in parts and are joined again by every reader."""

from __future__ import annotations

from qserver.documents import PART_HEADER, RUN_HEADER, Reassembler, decode, encode, run_token, split
from services.worker.kafka_export import Progress


def parts_of(
    value: bytes, size: int, first_seq: int = 1
) -> list[tuple[int, dict[str, str], bytes]]:
    chunks = split(value, size)
    out = []
    for i, chunk in enumerate(chunks, 1):
        headers = {"Nats-Msg-Id": f"env-1.{first_seq + i - 1}"}
        if len(chunks) > 1:
            headers[PART_HEADER] = f"{i}/{len(chunks)}"
        out.append((first_seq + i - 1, headers, chunk))
    return out


def test_a_large_document_is_split_and_joined_whole() -> None:
    doc = {"uid": "s1", "blob": "x" * 10_000}
    value = encode("start", doc)
    msgs = parts_of(value, 3000)
    assert len(msgs) == 4
    joiner = Reassembler()
    got = [joiner.add(seq, "p.docs.run.s1", h, data) for seq, h, data in msgs[:3]]
    assert got == [None, None, None] and joiner.first_seq == 1
    whole = joiner.add(msgs[3][0], "p.docs.run.s1", msgs[3][1], msgs[3][2])
    assert whole is not None
    assert (whole.first_seq, whole.last_seq, whole.run_uid, whole.publisher) == (
        1,
        4,
        "s1",
        "env-1",
    )
    assert decode(whole.value) == ("start", doc)
    assert joiner.first_seq is None


def test_a_document_missing_a_part_is_dropped_and_counted() -> None:
    msgs = parts_of(b"a" * 9000, 3000, first_seq=10)
    joiner = Reassembler()
    joiner.add(*msgs[0][:1], "p.docs.run.r", msgs[0][1], msgs[0][2])
    # Part 2 never comes (the stream's limits dropped it); part 3 cannot complete anything.
    assert joiner.add(msgs[2][0], "p.docs.run.r", msgs[2][1], msgs[2][2]) is None
    assert joiner.dropped == 1
    whole = joiner.add(20, "p.docs.run.r", {}, b"next")
    assert whole is not None and whole.value == b"next" and joiner.dropped == 1


def test_a_run_uid_that_is_no_subject_token_travels_in_a_header() -> None:
    assert run_token("0b5e-11aa_x") == "0b5e-11aa_x"
    token = run_token("odd uid.with*dots")
    assert token.startswith("h") and "." not in token and "*" not in token
    joiner = Reassembler()
    doc = joiner.add(1, f"p.docs.run.{token}", {RUN_HEADER: "odd uid.with*dots"}, b"v")
    assert doc is not None and doc.run_uid == "odd uid.with*dots"


def test_the_kafka_position_never_passes_an_undelivered_document() -> None:
    p = Progress(start=5)
    a = p.sent(5)
    p.read(5)
    b = p.sent(6)
    p.read(8)  # a document in three parts, 6..8
    assert p.position() == 5
    b.done = True
    assert p.position() == 5 and p.in_flight == 1
    a.done = True
    assert p.position() == 9
    p.read(9)  # the first part of a document not yet whole
    assert p.position(partial_first=9) == 9
