"""What the queue service knows of tasks: the foreground one, those just started, and when
results came in (`task_results_uid`). Pure state, fed by the environment's states (ADR 16).

Every fact comes from one ordered channel, the environment's state events, so they never
contradict each other: a result is stored before the state counts it done, and the lists
a script changed are read again before the same state ends the foreground task.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from qserver.protocol.tasks import TaskInfo
from qserver.protocol.worker import EnvState


@dataclass(frozen=True)
class Started:
    """A task the environment accepted: its number there, and which environment."""

    info: TaskInfo
    seq: int
    env_uid: str


class TaskTracker:
    def __init__(self) -> None:
        self.foreground: Started | None = None
        # Accepted, and not yet in a state the environment published since.
        self.pending: dict[str, Started] = {}
        self.task_results_uid = str(uuid.uuid4())
        self._env: EnvState | None = None
        # Of the current environment: finished tasks counted, and the number of started
        # tasks when the foreground task was last seen ended (a state older than that may
        # still show it running).
        self._done = 0
        self._ended_at = 0
        # Kernel mode: a foreground task ended and its execution loop still holds the kernel.
        # The manager stays `executing_task`, and the result is news, only once it is let go
        # (the reference's order: the loop stops, the manager is idle, the result comes).
        self.after_task = False
        self._news = False

    @property
    def background_tasks(self) -> int:
        return len(self._env.background) if self._env is not None else 0

    def running(self, task_uid: str) -> TaskInfo | None:
        """The running task with this uid, as far as is known here."""
        if task_uid in self.pending:
            return self.pending[task_uid].info
        env = self._env
        if env is None:
            return None
        if env.running_task is not None and env.running_task.task_uid == task_uid:
            return env.running_task
        for info in env.background:
            if info.task_uid == task_uid:
                return info
        return None

    def accepted(self, started: Started) -> None:
        """The environment accepted a task (its reply may come after its newer states)."""
        env = self._env
        if env is not None and env.env_uid == started.env_uid and env.tasks_started >= started.seq:
            # Already in a state seen here: running there, or even done.
            running = env.running_task.task_uid if env.running_task else None
            if not started.info.run_in_background and running == started.info.task_uid:
                self.foreground = started
            return
        self.pending[started.info.task_uid] = started
        if not started.info.run_in_background:
            self.foreground = started

    def on_env(self, env: EnvState | None) -> bool:
        """Take the environment's newest state; True if a task finished (a new result)."""
        if env is None:
            self._env, self.foreground, self._done, self._ended_at = None, None, 0, 0
            self.pending.clear()
            self.after_task = False
            if self._news:  # a result came while the kernel was held: it is news now
                self._news = False
                self.task_results_uid = str(uuid.uuid4())
                return True
            return False
        if self._env is None or self._env.env_uid != env.env_uid:
            # A new environment, or the first state since this service started: what it
            # finished before is not news.
            self._done, self._ended_at = env.tasks_done, 0
        self._env = env
        self.pending = {
            uid: s
            for uid, s in self.pending.items()
            if s.env_uid == env.env_uid and s.seq > env.tasks_started
        }
        fg = self.foreground
        running = env.running_task.task_uid if env.running_task else None
        if fg is not None and (
            fg.env_uid != env.env_uid
            or (env.tasks_started >= fg.seq and running != fg.info.task_uid)
        ):
            self.foreground, self._ended_at = None, env.tasks_started
            self.after_task = bool(env.ip_kernel_captured)
        if not env.ip_kernel_captured or env.running_item_uid is not None:
            self.after_task = False
        # Adopted from a state (after a restart of this service), unless the state is from
        # before the task was seen ended.
        if (
            self.foreground is None
            and env.running_task is not None
            and env.tasks_started > self._ended_at
        ):
            self.foreground = Started(env.running_task, env.tasks_started, env.env_uid)
        if env.tasks_done > self._done:
            self._done, self._news = env.tasks_done, True
        if self._news and not self.after_task:
            self._news = False
            self.task_results_uid = str(uuid.uuid4())
            return True
        return False
