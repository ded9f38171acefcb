"""When the Kafka export replaces its producer: a broker that forgot it, not a slow one."""

from __future__ import annotations

import json

from services.worker.kafka_export import (
    QUIET_S,
    STALL_ANYWAY_S,
    STALL_S,
    EpochWatch,
    stalled,
)


def stats(producer_id: int, epoch: int) -> str:
    # The shape of librdkafka's statistics, trimmed to what matters here.
    return json.dumps(
        {
            "name": "rdkafka#producer-1",
            "msg_cnt": 1,
            "brokers": {},
            "eos": {
                "idemp_state": "Assigned" if producer_id >= 0 else "WaitTransport",
                "idemp_stateage": 500,
                "txn_state": "Init",
                "producer_id": producer_id,
                "producer_epoch": epoch,
                "epoch_cnt": 1,
            },
        }
    )


def test_the_first_producer_id_is_no_bump_and_each_change_after_it_is_one() -> None:
    w = EpochWatch()
    for raw in (stats(-1, -1), stats(-1, -1), stats(1, 0), stats(1, 0)):
        w.seen_stats(raw)
    assert w.bumps == 0
    w.seen_stats(stats(1, 7))
    w.seen_stats(stats(1, 18).encode())
    assert w.bumps == 2
    w.delivered()
    assert w.bumps == 0
    w.seen_stats(stats(2, 0))  # a new id is a change too
    assert w.bumps == 1


def test_statistics_without_the_producer_fields_change_nothing() -> None:
    w = EpochWatch()
    w.seen_stats(stats(1, 0))
    w.seen_stats('{"name": "rdkafka#producer-1", "brokers": {}}')
    w.seen_stats("not json at all")
    assert (w.identity, w.bumps) == ((1, 0), 0)


def test_a_slow_broker_is_waited_for_and_a_forgetful_one_is_not() -> None:
    quiet = QUIET_S + 1
    # Slow: no delivery for a while, but librdkafka never had to re-identify.
    assert not stalled(STALL_S + 10, quiet, bumps=0)
    assert not stalled(STALL_ANYWAY_S - 1, quiet, bumps=1)
    # Forgotten: "unknown producer id" again and again, each answer an epoch bump.
    assert stalled(STALL_S + 0.1, quiet, bumps=2)
    assert not stalled(STALL_S - 0.1, quiet, bumps=50)
    # A broker reporting errors will say when it is back: never replaced meanwhile.
    assert not stalled(STALL_S + 10, QUIET_S - 1, bumps=50)
    # Whatever the signal, a producer silent this long is replaced.
    assert stalled(STALL_ANYWAY_S + 1, quiet, bumps=0)
