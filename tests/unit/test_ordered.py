"""The rank-ordered item list agrees with a plain list under random edits."""

from __future__ import annotations

import random

from qserver.protocol.items import QueueItem
from services.queue.ordered import OrderedItems


def test_random_edits_match_a_plain_list() -> None:
    rng = random.Random(7)
    ordered = OrderedItems()
    plain: list[str] = []
    counter = 0
    for _ in range(5000):
        op = rng.random()
        if op < 0.5 or not plain:
            k = rng.choice([1, 1, 1, 3, 40])
            # Bias towards one spot so that ranks get crowded and renumbering happens.
            index = rng.choice([0, len(plain), min(1, len(plain)), rng.randint(0, len(plain))])
            new = [f"u{counter + j}" for j in range(k)]
            counter += k
            ordered.insert(index, [QueueItem(name="p", item_uid=u) for u in new])
            plain[index:index] = new
        elif op < 0.8:
            k = rng.choice([1, 2, 30])
            uids = [*rng.sample(plain, min(k, len(plain))), "missing"]
            taken = ordered.remove(uids)
            assert [it.item_uid for it in taken] == uids[:-1]
            plain = [u for u in plain if u not in uids]
        else:
            uid = rng.choice(plain)
            assert ordered.position(uid) == plain.index(uid)
            ordered.replace(uid, QueueItem(name="q", item_uid=uid + "r"))
            plain[plain.index(uid)] = uid + "r"
        assert len(ordered) == len(plain)
    assert [it.item_uid for it in ordered] == plain
    assert all(ordered.position(u) == i for i, u in enumerate(plain))
