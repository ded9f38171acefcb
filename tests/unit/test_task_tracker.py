"""The queue service's view of tasks, from the environment's states (pure logic)."""

from __future__ import annotations

import msgspec

from qserver.protocol.tasks import TaskInfo
from qserver.protocol.worker import EnvState
from services.queue.tasks import Started, TaskTracker

ENV = "env-1"


def info(uid: str, background: bool = False) -> TaskInfo:
    return TaskInfo(task_uid=uid, time_start=1.0, run_in_background=background)


def state(
    started: int,
    done: int,
    running: str | None = None,
    background: tuple[str, ...] = (),
    env_uid: str = ENV,
) -> EnvState:
    return EnvState(
        env_uid=env_uid,
        pid=1,
        env_state="executing_task" if running else "idle",
        running_task=info(running) if running else None,
        background=[info(b, True) for b in background],
        tasks_started=started,
        tasks_done=done,
    )


def test_a_foreground_task_is_running_from_its_acceptance_until_a_state_ends_it() -> None:
    t = TaskTracker()
    t.on_env(state(0, 0))
    t.accepted(Started(info("a"), 1, ENV))
    assert t.foreground is not None and t.running("a") is not None
    # A state from before the task started says nothing about it.
    assert t.on_env(state(0, 0)) is False
    assert t.foreground is not None
    t.on_env(state(1, 0, running="a"))
    assert t.foreground is not None and t.running("a") is not None
    uid = t.task_results_uid
    assert t.on_env(state(1, 1)) is True
    assert t.foreground is None and t.running("a") is None
    assert t.task_results_uid != uid


def test_a_reply_that_comes_after_the_states_of_its_task_changes_nothing() -> None:
    t = TaskTracker()
    t.on_env(state(1, 1))  # the task ran and finished before its reply was read
    t.accepted(Started(info("a"), 1, ENV))
    assert t.foreground is None and t.running("a") is None and not t.pending
    t.on_env(state(2, 1, running="b"))
    t.accepted(Started(info("b"), 2, ENV))
    assert t.foreground is not None and t.foreground.info.task_uid == "b"


def test_an_older_state_seen_after_the_end_does_not_bring_the_task_back() -> None:
    t = TaskTracker()
    t.on_env(state(0, 0))
    t.accepted(Started(info("a"), 1, ENV))
    t.on_env(state(1, 1))
    t.on_env(state(1, 0, running="a"))  # a late reply to a state request
    assert t.foreground is None


def test_a_running_foreground_task_is_taken_from_the_first_state_after_a_restart() -> None:
    t = TaskTracker()
    first = t.task_results_uid
    # Results counted before this service started are not news.
    assert t.on_env(state(3, 2, running="c", background=("d",))) is False
    assert t.task_results_uid == first
    assert t.foreground is not None and t.foreground.info.task_uid == "c"
    assert t.background_tasks == 1 and t.running("d") is not None


def test_the_environment_ending_ends_every_task() -> None:
    t = TaskTracker()
    t.on_env(state(0, 0))
    t.accepted(Started(info("a"), 1, ENV))
    t.accepted(Started(info("b", True), 2, ENV))
    t.on_env(None)
    assert t.foreground is None and t.running("a") is None and t.running("b") is None
    assert t.background_tasks == 0
    # A new environment counts from zero, and its states are its own.
    t.on_env(state(0, 0, env_uid="env-2"))
    assert t.on_env(state(1, 1, env_uid="env-2")) is True


def test_background_tasks_are_running_while_a_state_lists_them() -> None:
    t = TaskTracker()
    t.on_env(state(0, 0))
    t.accepted(Started(info("b", True), 1, ENV))
    assert t.foreground is None and t.running("b") is not None
    t.on_env(state(1, 0, background=("b",)))
    assert t.running("b") is not None and t.background_tasks == 1 and not t.pending
    t.on_env(state(1, 1))
    assert t.running("b") is None and t.background_tasks == 0


def test_in_kernel_mode_the_task_ends_when_its_loop_lets_the_kernel_go() -> None:
    """The reference's order: the execution loop stops, the manager is idle, the result
    comes (its `task_results_uid`)."""
    t = TaskTracker()
    t.on_env(state(0, 0))
    t.accepted(Started(info("a"), 1, ENV))
    uid = t.task_results_uid
    held = msgspec.structs.replace(state(1, 1), ip_kernel_state="busy", ip_kernel_captured=True)
    assert t.on_env(held) is False
    assert t.foreground is None and t.after_task and t.task_results_uid == uid
    released = msgspec.structs.replace(held, ip_kernel_state="idle", ip_kernel_captured=False)
    assert t.on_env(released) is True
    assert not t.after_task and t.task_results_uid != uid
