"""Bluesky documents on Kafka: the wire format and the topic, shared by producer and consumer.

Value = msgpack of `[name, doc]` with msgpack-numpy arrays (what bluesky-kafka's Publisher
sends and its RemoteDispatcher reads); key = the run's start uid; topic
`<beamline>.bluesky.runengine.documents`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
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
