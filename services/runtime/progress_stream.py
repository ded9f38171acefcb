"""The stream that keeps the last progress event (ADR 25)."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from qserver.jsutil import ensure_stream
from qserver.protocol.subjects import Subjects

logger = logging.getLogger(__name__)


async def ensure_progress_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the stream `QS_<PREFIX>_PROGRESS`: one message, the last progress event.

    The environment (which publishes) and the queue service (which reads it at start) both
    make it, whichever comes first; readers that find no stream have no progress to show.
    """
    await ensure_stream(
        js,
        subjects.progress_stream,
        [subjects.progress_event],
        max_msgs=1,
        max_msgs_per_subject=1,
    )


async def ensure_progress_stream_logged(js: JetStreamContext, subjects: Subjects) -> None:
    """`ensure_progress_stream`, for a task nobody waits on: a failure is logged, not raised."""
    try:
        await ensure_progress_stream(js, subjects)
    except Exception as e:
        logger.warning("the progress stream could not be made: %r", e)
