"""Every RunEngine document to Kafka, in the format bluesky-kafka's RemoteDispatcher reads.

Topic `<beamline>.bluesky.runengine.documents`, value = msgpack of `[name, doc]` with
msgpack-numpy arrays, key = the run's start uid. The publisher is a RunEngine callback: it
never blocks a plan and never raises (an exception on a stop document aborts the run).
Documents wait in librdkafka's bounded local queue; those that could not be queued or
delivered are counted (`failed`) and reported on the console, those queued but not yet
acknowledged by the broker are `pending`.

Configuration (command line of the environment process, or the environment):
- `QSERVER_KAFKA_BOOTSTRAP`: bootstrap servers; unset or empty = Kafka off.
- `QSERVER_KAFKA_TOPIC`: the document topic (default `<beamline>.bluesky.runengine.documents`
  with `QSERVER_BEAMLINE`, default `qs`).
- `QSERVER_KAFKA_PRODUCER_CONFIG`: extra confluent-kafka producer options, a JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from qserver.documents import DEFAULT_TOPIC, add_kafka_arguments, decode, encode

logger = logging.getLogger(__name__)

# At most one console line about failures per this many seconds.
REPORT_EVERY_S = 5.0
POLL_S = 0.1
# Documents pending this long with no delivery, while the broker has reported no error for
# QUIET_S, mean a producer the broker no longer knows (a memory-only broker restarted
# answers "unknown producer id" for ever): the producer is replaced, its documents failed.
STALL_S = 5.0
QUIET_S = 3.0
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 5,
    "queue.buffering.max.messages": 100_000,
}


class RunKeys:
    """The start uid of the run each document belongs to (called on one thread only)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}  # descriptor or resource uid -> start uid
        self._children: dict[str, list[str]] = {}  # start uid -> its descriptors, resources
        self._last_start = ""

    def key(self, name: str, doc: dict[str, Any]) -> str:
        if name == "start":
            self._last_start = uid = str(doc["uid"])
            self._children.setdefault(uid, [])
            return uid
        if name == "stop":
            uid = str(doc.get("run_start") or self._last_start)
            for child in self._children.pop(uid, []):
                self._parent.pop(child, None)
            return uid
        if name in ("descriptor", "resource", "stream_resource"):
            start = str(doc.get("run_start") or self._last_start)
            self._parent[doc["uid"]] = start
            self._children.setdefault(start, []).append(doc["uid"])
            return start
        parent = doc.get("descriptor") or doc.get("resource")
        if isinstance(parent, list):  # a page's fields are lists in some versions
            parent = parent[0] if parent else None
        if isinstance(parent, str) and parent in self._parent:
            return self._parent[parent]
        return self._last_start


class KafkaPublisher:
    """A RunEngine callback that produces every document to Kafka, never blocking."""

    def __init__(
        self,
        bootstrap: str,
        topic: str = DEFAULT_TOPIC,
        producer_config: dict[str, Any] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self._report = report or (lambda line: print(line, flush=True))
        self._config = {
            **PRODUCER_DEFAULTS,
            **(producer_config or {}),
            "bootstrap.servers": bootstrap,
            "error_cb": self._on_error,
            # librdkafka's own log, through Python logging and so the console: only the
            # critical. Its errors (a broker down logs one a second) reach `_on_error`,
            # which reports them rate-limited.
            "logger": _rdkafka_logger(),
        }
        self._producer = Producer(self._config)
        self._keys = RunKeys()
        # Each counter is written by one thread: `_produced` and `_dropped` by the
        # RunEngine's, `_delivered` and `_undelivered` by the poller's.
        self._produced = 0
        self._dropped = 0
        self._delivered = 0
        self._undelivered = 0
        self._reported_failed = 0
        self._last_report = 0.0
        self._last_error = ""
        self._last_progress = time.monotonic()
        self._last_error_at = 0.0
        self._replaced = 0
        self._retired: list[Any] = []  # replaced producers, polled until purged
        self._report_lock = threading.Lock()
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    # ----- counters -----

    @property
    def pending(self) -> int:
        """Documents queued locally or in flight, not yet acknowledged by the broker."""
        return max(0, self._produced - self._delivered - self._undelivered)

    @property
    def failed(self) -> int:
        """Documents lost: not queued (buffer full, encoding error) or not delivered."""
        return self._dropped + self._undelivered

    @property
    def delivered(self) -> int:
        return self._delivered

    # ----- the RunEngine callback -----

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        try:
            key = self._keys.key(name, doc)
            value = encode(name, doc)
            self._producer.produce(
                self.topic, value=value, key=key.encode(), on_delivery=self._on_delivery
            )
            self._produced += 1
        except BufferError:
            self._dropped += 1
            self._problem("the local queue is full")
        except Exception as e:
            self._dropped += 1
            self._problem(f"{type(e).__name__}: {e}")

    # ----- the poller thread -----

    def _poll(self) -> None:
        while not self._closing.is_set():
            try:
                self._producer.poll(POLL_S)
            except Exception:
                logger.exception("Kafka poll failed")
                time.sleep(POLL_S)
            self._drain_retired()
            self._check_stall()
            self._maybe_report()

    def _drain_retired(self) -> None:
        """Serve replaced producers until their purged documents are all counted."""
        for old in list(self._retired):
            try:
                old.poll(0)
                if len(old) == 0:
                    self._retired.remove(old)
            except Exception:
                self._retired.remove(old)

    def _check_stall(self) -> None:
        now = time.monotonic()
        if not self.pending:
            self._last_progress = now
            return
        if now - self._last_progress < STALL_S or now - self._last_error_at < QUIET_S:
            return
        from confluent_kafka import Producer

        stuck, pending = self._producer, self.pending
        try:
            self._producer = Producer(self._config)
            stuck.purge()
            self._retired.append(stuck)
        except Exception:
            logger.exception("replacing the Kafka producer failed")
        self._replaced += 1
        self._last_progress = now
        self._report(
            f"Kafka: no delivery for {STALL_S:g} s with the broker up ({pending} pending): "
            "a new producer takes over; the pending documents are counted as failed"
        )

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self._delivered += 1
            self._last_progress = time.monotonic()
        else:
            self._undelivered += 1
            self._problem(str(err))

    def _on_error(self, err: Any) -> None:
        self._last_error_at = time.monotonic()
        self._problem(str(err))

    # ----- reporting -----

    def _problem(self, what: str) -> None:
        self._last_error = what
        self._maybe_report()

    def _maybe_report(self) -> None:
        """A console line when something failed since the last one, rate-limited."""
        try:
            now = time.monotonic()
            with self._report_lock:
                failed, error = self.failed, self._last_error
                if not error or now - self._last_report < REPORT_EVERY_S:
                    return
                if failed == self._reported_failed and not self.pending:
                    return
                new = failed - self._reported_failed
                self._reported_failed, self._last_report, self._last_error = failed, now, ""
            self._report(
                f"Kafka: documents to '{self.topic}' not delivered: {error} "
                f"({new} newly failed, {self.failed} failed in all, {self.pending} pending)"
            )
        except Exception:  # never raise into the RunEngine
            logger.debug("report failed", exc_info=True)

    # ----- closing -----

    def flush(self, timeout: float = 5.0) -> int:
        """Wait up to `timeout` s for pending documents; the number still pending."""
        return int(self._producer.flush(timeout))

    def close(self, timeout: float = 5.0) -> int:
        left = self.flush(timeout)
        self._closing.set()
        self._poller.join(timeout=1.0)
        if left or self.failed:
            self._report(
                f"Kafka: closing with {left} documents not delivered "
                f"and {self.failed} failed ({self.delivered} delivered)"
            )
        return left


def _rdkafka_logger() -> logging.Logger:
    log = logging.getLogger(f"{__name__}.rdkafka")
    log.setLevel(logging.CRITICAL)
    return log


# ----- configuration -----


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The Kafka options of the environment process, defaulting to the environment."""
    add_kafka_arguments(p, "publish")
    p.add_argument(
        "--kafka-producer-config",
        default=os.environ.get("QSERVER_KAFKA_PRODUCER_CONFIG", ""),
        help="extra producer options, a JSON object ($QSERVER_KAFKA_PRODUCER_CONFIG)",
    )


def from_arguments(args: argparse.Namespace) -> KafkaPublisher | None:
    """The publisher the options ask for, or None when Kafka is off."""
    bootstrap = (args.kafka_bootstrap or "").strip()
    if not bootstrap:
        return None
    extra = json.loads(args.kafka_producer_config) if args.kafka_producer_config else {}
    if not isinstance(extra, dict):
        raise ValueError("QSERVER_KAFKA_PRODUCER_CONFIG must be a JSON object")
    publisher = KafkaPublisher(bootstrap, args.kafka_topic, extra)
    logger.info("publishing documents to Kafka at %s, topic %s", bootstrap, args.kafka_topic)
    return publisher


__all__ = [
    "DEFAULT_TOPIC",
    "KafkaPublisher",
    "RunKeys",
    "add_arguments",
    "decode",
    "encode",
    "from_arguments",
]
