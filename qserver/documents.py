"""Bluesky documents on the wire: Kafka's format and topic, and the document stream's parts.

Value = msgpack of `[name, doc]` with msgpack-numpy arrays (what bluesky-kafka's Publisher
sends and its RemoteDispatcher reads); key = the run's start uid; topic
`<beamline>.bluesky.runengine.documents`. The document stream (JetStream, ADR 10) carries
the same values on `<prefix>.docs.run.<start uid>`, a document larger than a NATS message
in consecutive parts.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

DEFAULT_BEAMLINE = "qs"


def topic_for(beamline: str) -> str:
    return f"{beamline}.bluesky.runengine.documents"


DEFAULT_TOPIC = topic_for(DEFAULT_BEAMLINE)


def configured_topic(env: Mapping[str, str] = os.environ) -> str:
    """`$QSERVER_KAFKA_TOPIC`, else the topic of `$QSERVER_BEAMLINE`, else the default."""
    return env.get("QSERVER_KAFKA_TOPIC") or topic_for(
        env.get("QSERVER_BEAMLINE") or DEFAULT_BEAMLINE
    )


def add_kafka_arguments(p: argparse.ArgumentParser, role: str) -> None:
    """`--kafka-bootstrap` and `--kafka-topic`, defaulting to the environment.

    `role` says what this program does with documents, for the help text.
    """
    env = os.environ
    p.add_argument(
        "--kafka-bootstrap",
        default=env.get("QSERVER_KAFKA_BOOTSTRAP", ""),
        help=f"Kafka bootstrap servers to {role} documents; empty = off ($QSERVER_KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--kafka-topic",
        default=configured_topic(env),
        help="the document topic ($QSERVER_KAFKA_TOPIC, else from $QSERVER_BEAMLINE)",
    )


def encode(name: str, doc: dict[str, Any]) -> bytes:
    import msgpack_numpy  # imports numpy: only where documents are handled

    return msgpack.packb([name, doc], default=msgpack_numpy.encode)  # type: ignore[no-any-return]


def decode(value: bytes) -> tuple[str, dict[str, Any]]:
    """(name, doc) of a message value; ValueError if it is not a document."""
    import msgpack_numpy

    try:
        name, doc = msgpack.unpackb(value, object_hook=msgpack_numpy.decode)
    except Exception as e:
        raise ValueError(f"not a msgpack [name, doc] pair: {e}") from None
    if not isinstance(name, str) or not isinstance(doc, dict):
        raise ValueError("not a [name, doc] pair")
    return name, doc


# ----- the document stream (JetStream): one message per document, or per part of one -----

# `<part>/<parts>`, 1-based, on each message of a document split because it is larger than
# what one NATS message may carry; the parts of a document are consecutive in the stream.
PART_HEADER = "Qs-Part"
# The run's start uid when it cannot be the subject's last token (not a plain uid).
RUN_HEADER = "Qs-Run"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def run_token(run_uid: str) -> str:
    """The subject token of a run: its uid, or a digest of it when the uid is no plain token."""
    if _TOKEN_RE.match(run_uid):
        return run_uid
    import hashlib  # rare; kept out of the stack's supervisor, which imports this module

    return "h" + hashlib.sha256(run_uid.encode()).hexdigest()[:40]


def split(value: bytes, part_size: int) -> list[bytes]:
    """`value` in parts of at most `part_size` bytes (one part when it fits)."""
    if len(value) <= part_size:
        return [value]
    return [value[i : i + part_size] for i in range(0, len(value), part_size)]


@dataclass(frozen=True)
class StreamDoc:
    """One document read back from the document stream, its parts joined."""

    first_seq: int  # the stream sequence of its first part
    last_seq: int
    run_uid: str  # the Kafka key
    value: bytes  # msgpack `[name, doc]`, the Kafka value
    publisher: str  # who published it (the environment's uid), from the message id


class Reassembler:
    """Joins the parts of split documents; a document with a part missing is dropped."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._first_seq = 0
        self._broken = False  # parts of a document whose beginning is missing went by
        self.dropped = 0  # documents lost for a missing part

    @property
    def first_seq(self) -> int | None:
        """The sequence of the first part of a document not yet whole, if any."""
        return self._first_seq if self._parts else None

    def add(
        self, seq: int, subject: str, headers: Mapping[str, str] | None, data: bytes
    ) -> StreamDoc | None:
        """The whole document once its last part is here, else None."""
        headers = headers or {}
        run_uid = headers.get(RUN_HEADER) or subject.rsplit(".", 1)[-1]
        publisher = (headers.get("Nats-Msg-Id") or "").rsplit(".", 1)[0]
        part = headers.get(PART_HEADER)
        if not part:
            self._lose()
            return StreamDoc(seq, seq, run_uid, data, publisher)
        try:
            index, count = (int(x) for x in part.split("/"))
        except ValueError:
            index, count = 0, 0
        if index == 1:
            self._lose()
            self._parts, self._first_seq = [data], seq
        elif self._parts and index == len(self._parts) + 1:
            self._parts.append(data)
        else:  # a part without the ones before it: its document is lost
            self._parts, self._broken = [], True
            if index >= count:
                self._lose()
            return None
        if index < count:
            return None
        value, self._parts = b"".join(self._parts), []
        return StreamDoc(self._first_seq, seq, run_uid, value, publisher)

    def _lose(self) -> None:
        """Count the document in progress as lost, if there is one."""
        if self._parts or self._broken:
            self.dropped += 1
        self._parts, self._broken = [], False
