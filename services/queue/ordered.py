"""An ordered collection of queue items with O(log n) position lookup by uid.

Each item has a float rank that grows along the queue; the position of a uid is a binary
search for its rank. Inserting between two items takes a rank between theirs, so no other
item changes; when floats get too close, every rank is renumbered (rare, O(n)). Ranks live
only in memory: the log records positions, never ranks.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator

from qserver.protocol.items import QueueItem

SPACING = 1024.0


class OrderedItems:
    def __init__(self, items: list[QueueItem] | None = None) -> None:
        self._items: list[QueueItem] = []
        self._ranks: list[float] = []
        self._by_uid: dict[str, tuple[QueueItem, float]] = {}
        if items:
            self.insert(0, items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[QueueItem]:
        return iter(self._items)

    def __getitem__(self, index: int) -> QueueItem:
        return self._items[index]

    def as_list(self) -> list[QueueItem]:
        """The items in order (the caller must not change the list)."""
        return self._items

    def get(self, uid: str) -> QueueItem | None:
        entry = self._by_uid.get(uid)
        return entry[0] if entry else None

    def __contains__(self, uid: object) -> bool:
        return uid in self._by_uid

    def position(self, uid: str) -> int:
        """Index of the item with this uid; KeyError if it is not here."""
        return bisect.bisect_left(self._ranks, self._by_uid[uid][1])

    def insert(self, index: int, items: list[QueueItem]) -> None:
        ranks = self._ranks_between(index, len(items))
        if ranks is None:
            self._renumber()
            ranks = self._ranks_between(index, len(items))
            assert ranks is not None
        self._items[index:index] = items
        self._ranks[index:index] = ranks
        for item, rank in zip(items, ranks, strict=True):
            self._by_uid[item.item_uid] = (item, rank)  # type: ignore[index]

    def replace(self, uid: str, item: QueueItem) -> None:
        """Put `item` where the item with `uid` is (the new item may have a new uid)."""
        index = self.position(uid)
        _, rank = self._by_uid.pop(uid)
        self._items[index] = item
        self._by_uid[item.item_uid] = (item, rank)  # type: ignore[index]

    def remove(self, uids: list[str]) -> list[QueueItem]:
        """Take out the items with these uids; return them in the order of `uids`."""
        present = [uid for uid in uids if uid in self._by_uid]
        if len(present) <= 16:
            taken = []
            for uid in present:
                index = self.position(uid)
                del self._items[index], self._ranks[index]
                taken.append(self._by_uid.pop(uid)[0])
            return taken
        gone = {uid: self._by_uid.pop(uid) for uid in present}
        keep = [i for i, it in enumerate(self._items) if it.item_uid not in gone]
        self._items = [self._items[i] for i in keep]
        self._ranks = [self._ranks[i] for i in keep]
        return [gone[uid][0] for uid in present]

    def clear(self) -> None:
        self._items.clear()
        self._ranks.clear()
        self._by_uid.clear()

    def _ranks_between(self, index: int, k: int) -> list[float] | None:
        """k increasing ranks strictly between the neighbours of `index`; None if too close."""
        n = len(self._ranks)
        lo = (
            self._ranks[index - 1]
            if index > 0
            else (self._ranks[0] if n else 0.0) - SPACING * (k + 1)
        )
        hi = self._ranks[index] if index < n else lo + SPACING * (k + 1)
        step = (hi - lo) / (k + 1)
        ranks = [lo + step * (j + 1) for j in range(k)]
        if ranks and not (
            lo < ranks[0] and ranks[-1] < hi and all(a < b for a, b in itertools.pairwise(ranks))
        ):
            return None
        return ranks

    def _renumber(self) -> None:
        self._ranks = [SPACING * i for i in range(len(self._items))]
        pairs = zip(self._items, self._ranks, strict=True)
        self._by_uid = {it.item_uid: (it, r) for it, r in pairs}  # type: ignore[misc]
