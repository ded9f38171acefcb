"""Which runs are being saved, which documents to write, and how far reading may be committed.

Pure bookkeeping, no I/O. The archiver reads the document stream in order (offsets are
stream sequences); a run is open from its start document to its stop document. The
position may be committed only up to the first document of the oldest run still open, so
that after a crash every unfinished run is read again from its start (and rewritten from
scratch), while finished ones are not. Documents are recognised by uid, so one delivered
twice is written once. A run whose environment process ended before its stop document is
abandoned once documents of a newer environment arrive: it can never finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Stored(Enum):
    """What the catalog holds of a run when its start document arrives."""

    ABSENT = "absent"
    PARTIAL = "partial"  # a start without a stop: a write was cut short
    COMPLETE = "complete"


class Action(Enum):
    WRITE = "write"  # a new document of a run being written
    SKIP = "skip"  # a repeat, or a document of a run the catalog already has
    ORPHAN = "orphan"  # a document of a run whose start was never seen


@dataclass
class OpenRun:
    uid: str
    first_offset: int
    already_saved: bool
    start: dict[str, Any] = field(default_factory=dict)  # the start document
    seen: set[str] = field(default_factory=set)
    publisher: str = ""  # the environment process that published it


def doc_uid(name: str, doc: dict[str, Any]) -> str | None:
    """The document's own id, when it has one (pages have lists of them)."""
    if name in ("datum",):
        return doc.get("datum_id")
    uid = doc.get("uid")
    return uid if isinstance(uid, str) else None


class RunLedger:
    def __init__(self) -> None:
        self.open: dict[str, OpenRun] = {}
        self.next_offset: int | None = None  # one past the last document handled

    def start(
        self,
        uid: str,
        offset: int,
        stored: Stored,
        doc: dict[str, Any] | None = None,
        *,
        end: int | None = None,
        publisher: str = "",
    ) -> Action:
        """A start document (from `offset` to `end`): write it, unless the catalog has the run."""
        self.next_offset = (end or offset) + 1
        if uid in self.open:  # the same start again (redelivered while the run is open)
            return Action.SKIP
        run = OpenRun(
            uid,
            offset,
            already_saved=stored is Stored.COMPLETE,
            start=doc or {},
            publisher=publisher,
        )
        run.seen.add(uid)
        self.open[uid] = run
        return Action.SKIP if run.already_saved else Action.WRITE

    def document(
        self, run_uid: str, name: str, doc: dict[str, Any], offset: int, end: int | None = None
    ) -> Action:
        """Any document but a start, of the run `run_uid` (the message key)."""
        self.next_offset = (end or offset) + 1
        run = self.open.get(run_uid)
        if run is None:
            return Action.ORPHAN
        if run.already_saved:
            return Action.SKIP
        uid = doc_uid(name, doc)
        if uid is not None:
            if uid in run.seen:
                return Action.SKIP
            run.seen.add(uid)
        return Action.WRITE

    def finish(self, run_uid: str) -> OpenRun:
        """The run's stop document is stored (or was already): the run is closed."""
        return self.open.pop(run_uid)

    def abandon_others(self, publisher: str) -> list[OpenRun]:
        """Close the open runs of other publishers: their environment ended before their stop."""
        if not publisher:
            return []
        gone = [r for r in self.open.values() if r.publisher and r.publisher != publisher]
        for run in gone:
            del self.open[run.uid]
        return gone

    def commit_point(self) -> int | None:
        """The offset to commit: the next document to read after a restart."""
        if self.open:
            return min(run.first_offset for run in self.open.values())
        return self.next_offset

    def reset(self) -> None:
        """Forget every open run (the consumer goes back to the commit point)."""
        self.open.clear()
        self.next_offset = None
