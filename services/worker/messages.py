"""What the worker service and its environment process tell each other beyond the protocol.

`EnvStatus` is an `EnvState` with the error of a failed start and the worker that
supervises the environment; readers of `EnvState` ignore the extra fields. `EnvRecord` is
the worker's note of its environment in a KV bucket, so that a restarted worker can find
the environment again (and adopt it), or settle the item that a lost one ran.
`AttachRequest` (on `env.attach`) is how a restarted worker takes over a living environment.
"""

from __future__ import annotations

import msgspec

from qserver.protocol.subjects import Subjects
from qserver.protocol.worker import EnvState, RunInfo

RECORD_KEY = "env"
# Seconds an idle environment with no worker service waits to be adopted, then closes itself.
ORPHAN_TIMEOUT_S = 60.0


class EnvStatus(EnvState, frozen=True, kw_only=True):
    """The environment's state; `msg`/`traceback` are set when its startup code failed."""

    msg: str = ""
    traceback: str = ""
    owner: str = ""  # the worker service instance that supervises it


class EnvRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The environment process the worker service supervises now."""

    env_uid: str
    pid: int
    host: str
    running_item_uid: str | None = None
    re_state: str | None = None
    run_list: list[RunInfo] = msgspec.field(default_factory=list)
    time_start: float = 0.0  # when the worker first saw the item running
    worker: str = ""  # the worker service instance that supervises it


class AttachRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A worker service asks the environment `env_uid` to be supervised by it from now on
    (with `probe`: only whether it is there, and who supervises it)."""

    env_uid: str
    worker: str
    probe: bool = False


class AttachReply(msgspec.Struct, frozen=True, kw_only=True):
    """Accepted, or refused because another worker that is alive supervises it (`owner`)."""

    success: bool
    msg: str = ""
    owner: str = ""
    previous: str = ""  # the supervisor it had before this request
    state: EnvStatus | None = None


def worker_bucket(subjects: Subjects) -> str:
    """The KV bucket of the worker service (named beside the lists bucket)."""
    return subjects.lists_bucket.replace("_LISTS", "_WORKER")
