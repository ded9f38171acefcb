"""How long the kernel's execution loop holds the kernel after a job (ADR 20, amended).

A foreground task gives the kernel back as it ends (no queue item can be waiting for the
loop: a task runs only while the manager is idle); a finished plan holds it for the queue's
next item; a paused plan frees it at once. Pure logic: `Environment._run_job` on a stand-in.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

from services.worker.env.engine import Environment
from services.worker.env.kernel import HOLD_S, LettingGo


def env(running: object = None) -> SimpleNamespace:
    return SimpleNamespace(lock=threading.Lock(), running=running)


def test_a_foreground_task_lets_the_kernel_go_as_it_ends() -> None:
    ran: list[str] = []
    job = LettingGo(lambda: ran.append("task"))
    assert Environment._run_job(env(), job) == 0.0  # type: ignore[arg-type]
    assert ran == ["task"]


def test_an_interrupted_task_lets_the_kernel_go_too() -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert Environment._run_job(env(), LettingGo(interrupted)) == 0.0  # type: ignore[arg-type]


def test_a_finished_plan_holds_the_kernel_for_the_next_item() -> None:
    assert Environment._run_job(env(), lambda: None) == HOLD_S  # type: ignore[arg-type]


def test_a_paused_plan_frees_the_kernel_at_once() -> None:
    assert Environment._run_job(env(running=object()), lambda: None) == 0.0  # type: ignore[arg-type]
