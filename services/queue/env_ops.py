"""Opening, closing and destroying the environment: the manager states they show.

The reference's manager answers `environment_open`, `_close` and `_destroy` at once and
shows `creating_environment`, `closing_environment` or `destroying_environment` until the
environment is ready or gone (its client gives up on a request after 5 s; an open takes
1-6 s). Here the queue service hands the command to the worker service, answers once the
worker took it (or after `ACCEPT_WAIT_S` at the latest), and the state then comes from what
the worker and the environment report, not from a flag of this process (ADR 17):

- an `Operation` covers only the moment between the command and the first state that
  shows it (the worker's answer and its state event travel apart), and always ends: on
  that state, on the worker's refusal or silence, or after `SHOW_WAIT_S`;
- afterwards the state is derived (`derived_state`): an environment `initializing` (or
  `failed`, on its way out) is being created, one `closing`/`closed` is being closed, one
  the worker marks `destroying` is being destroyed. A standby that takes over, or a queue
  service restarted in the middle, therefore shows the same state, and nothing can stay
  behind once the environment is ready or gone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from qserver.protocol.worker import CmdReply, EnvState, WorkerState

# The handler answers when the worker took the command, or after this long: the operation
# goes on, and the manager state tells how it ends.
ACCEPT_WAIT_S = 2.0
# An operation the worker took ends when a state shows it; this long at the latest (then
# the worker is asked for its state, which decides).
SHOW_WAIT_S = 5.0

CREATING = "creating_environment"
CLOSING = "closing_environment"
DESTROYING = "destroying_environment"

# Environment states of an environment that is not open yet (or failed to open).
OPENING_STATES = ("initializing", "failed")
CLOSING_STATES = ("closing", "closed")


@dataclass
class Operation:
    """One command to the worker service, from the request until its state shows."""

    name: str  # the manager state while it lasts: CREATING, CLOSING or DESTROYING
    env_uid: str | None  # the environment it is about
    answered: asyncio.Future[CmdReply]  # the worker's answer (a refusal if it had none)
    shown: asyncio.Event = field(default_factory=asyncio.Event)
    # The client had its answer before the worker's: a refusal then goes to the console.
    replied_early: bool = False

    def shown_by(self, worker: WorkerState, env: EnvState | None) -> bool:
        """Whether these states show the operation (or its end), so it may step aside.

        Only states naming this operation's environment count: a state sent before the
        command (a heartbeat, a late reply) says nothing about it.
        """
        uid = self.env_uid
        if uid is None:
            return True
        if worker.ended_env_uid == uid and worker.env_uid != uid:
            return True  # it ended
        if self.name == CREATING:
            return worker.env_exists and worker.env_uid == uid
        if worker.env_uid != uid or not worker.env_exists:
            return True  # gone (or another one is there)
        if self.name == CLOSING:
            return env is not None and env.env_uid == uid and env.env_state in CLOSING_STATES
        return worker.destroying


def derived_state(worker: WorkerState, env: EnvState | None, lists_loading: bool) -> str | None:
    """The environment operation that the worker's and the environment's states show."""
    if not worker.env_exists or env is None or env.env_uid != worker.env_uid:
        return None
    if worker.destroying:
        return DESTROYING
    if env.env_state in OPENING_STATES or lists_loading:
        return CREATING
    if env.env_state in CLOSING_STATES:
        return CLOSING
    return None
