"""What the worker service and its environment process tell each other beyond the protocol.

`EnvStatus` is an `EnvState` with the error of a failed start; readers of `EnvState`
ignore the extra fields. `EnvRecord` is the worker's note of its environment in a KV
bucket, so that a restarted worker can settle an item that its lost environment ran.
"""

from __future__ import annotations

import msgspec

from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import EnvState, RunInfo

RECORD_KEY = "env"


class EnvStatus(EnvState, frozen=True, kw_only=True):
    """The environment's state; `msg`/`traceback` are set when its startup code failed."""

    msg: str = ""
    traceback: str = ""


class EnvRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The environment process the worker service supervises now."""

    env_uid: str
    pid: int
    host: str
    running_item_uid: str | None = None
    re_state: str | None = None
    run_list: list[RunInfo] = msgspec.field(default_factory=list)
    time_start: float = 0.0  # when the worker first saw the item running


def worker_bucket(subjects: Subjects) -> str:
    """The KV bucket of the worker service (named beside the lists bucket)."""
    return subjects.lists_bucket.replace("_LISTS", "_WORKER")
