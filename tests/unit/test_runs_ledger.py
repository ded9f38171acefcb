"""The archiver's bookkeeping: which documents to write, and how far Kafka may be committed."""

from __future__ import annotations

from services.history.runs import Action, RunLedger, Stored


def ev(uid: str) -> dict[str, str]:
    return {"uid": uid, "descriptor": "d"}


def test_a_new_run_is_written_and_commits_wait_for_its_stop() -> None:
    led = RunLedger()
    assert led.commit_point() is None
    assert led.start("A", 10, Stored.ABSENT) is Action.WRITE
    assert led.document("A", "descriptor", {"uid": "d"}, 11) is Action.WRITE
    assert led.document("A", "event", ev("e1"), 12) is Action.WRITE
    assert led.commit_point() == 10  # the run is open: a restart must read it from its start
    assert led.document("A", "stop", {"uid": "s", "run_start": "A"}, 13) is Action.WRITE
    run = led.finish("A")
    assert run is not None and not run.already_saved
    assert led.commit_point() == 14


def test_documents_seen_twice_are_written_once() -> None:
    led = RunLedger()
    led.start("A", 0, Stored.ABSENT)
    assert led.document("A", "event", ev("e1"), 1) is Action.WRITE
    assert led.document("A", "event", ev("e1"), 2) is Action.SKIP
    assert led.start("A", 3, Stored.PARTIAL) is Action.SKIP  # a repeated start while open
    datum = {"datum_id": "r/1", "resource": "r"}
    assert led.document("A", "datum", datum, 4) is Action.WRITE
    assert led.document("A", "datum", datum, 5) is Action.SKIP


def test_a_run_the_catalog_has_whole_is_skipped_and_a_partial_one_rewritten() -> None:
    led = RunLedger()
    assert led.start("A", 0, Stored.COMPLETE) is Action.SKIP
    assert led.document("A", "event", ev("e1"), 1) is Action.SKIP
    assert led.document("A", "stop", {"uid": "s"}, 2) is Action.SKIP
    run = led.finish("A")
    assert run is not None and run.already_saved
    assert led.start("B", 3, Stored.PARTIAL) is Action.WRITE
    assert led.document("B", "event", ev("e2"), 4) is Action.WRITE


def test_interleaved_runs_commit_only_below_the_oldest_open_one() -> None:
    led = RunLedger()
    led.start("A", 0, Stored.ABSENT)
    led.start("B", 1, Stored.ABSENT)
    led.document("B", "stop", {"uid": "sb"}, 2)
    led.finish("B")
    assert led.commit_point() == 0  # A is still open
    led.document("A", "stop", {"uid": "sa"}, 3)
    led.finish("A")
    assert led.commit_point() == 4


def test_documents_of_an_unknown_run_are_orphans_and_reset_forgets_open_runs() -> None:
    led = RunLedger()
    assert led.document("X", "event", ev("e"), 7) is Action.ORPHAN
    assert led.commit_point() == 8
    led.start("A", 8, Stored.ABSENT)
    led.reset()
    assert led.commit_point() is None
    assert led.document("A", "event", ev("e1"), 9) is Action.ORPHAN


def test_a_run_whose_environment_ended_is_abandoned_when_another_one_publishes() -> None:
    led = RunLedger()
    led.start("A", 0, Stored.ABSENT, publisher="env-1")
    led.document("A", "event", ev("e1"), 1)
    assert led.abandon_others("env-1") == []
    assert led.commit_point() == 0
    gone = led.abandon_others("env-2")  # a new environment: env-1's run can never finish
    assert [r.uid for r in gone] == ["A"]
    assert led.commit_point() == 2


def test_a_document_in_parts_moves_the_commit_point_past_its_last_part() -> None:
    led = RunLedger()
    led.start("A", 0, Stored.ABSENT, end=2)
    assert led.commit_point() == 0
    led.document("A", "stop", {"uid": "s"}, 3, end=5)
    led.finish("A")
    assert led.commit_point() == 6
