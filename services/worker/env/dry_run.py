"""`env.dry_run`: simulate a plan item on a thread of its own, beside whatever runs (ADR 31).

The RunEngine's thread is never used: a dry run may go on while a plan runs or is paused.
One dry run at a time, bounded in messages and seconds (`simulate.py`), so that it cannot
take more than a small share of the process from a running plan.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
import traceback
from typing import TYPE_CHECKING

from qserver.plan_tools.resolve import resolve_args
from qserver.protocol.dry_run import BUDGET_S, EnvDryRun, EnvDryRunReply

if TYPE_CHECKING:
    from services.worker.env.engine import Environment

logger = logging.getLogger(__name__)

# States in which the namespace holds no usable plans and devices.
NOT_READY = ("initializing", "failed", "closing", "closed")
# A plan that does not yield (its own code loops) is stopped this long after the budget,
# and waited for this long again before it is reported stuck.
OVERRUN_S = 5.0


class Overrun(BaseException):
    """Raised inside the dry-run thread when its plan does not come back within bounds.

    A BaseException, so that a plan's `except Exception` does not swallow it."""


class DryRuns:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self._since: float | None = None  # when the dry run in progress started

    async def run(self, req: EnvDryRun) -> EnvDryRunReply:
        env = self.env
        if env.env_state in NOT_READY or env.lists is None:
            return EnvDryRunReply(
                success=False, msg=f"The environment is not ready: it is {env.env_state}"
            )
        if self._since is not None:
            return EnvDryRunReply(
                success=False,
                msg="Another dry run is in progress "
                f"(for {time.monotonic() - self._since:.1f} s): try again when it ends",
            )
        self._since = time.monotonic()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[EnvDryRunReply] = loop.create_future()

        def work() -> None:
            try:
                reply = self._simulate(req)
            except Overrun:
                reply = EnvDryRunReply(
                    success=False,
                    msg=f"The plan did not yield a message for over {BUDGET_S + OVERRUN_S:g} s "
                    "(its own code loops or waits): the dry run stopped it",
                )
            except BaseException as e:  # never leave the request without an answer
                reply = EnvDryRunReply(success=False, msg=f"The dry run failed: {e!r}")
            finally:
                # Free for the next one only when this thread is done with the plan.
                self._since = None
            loop.call_soon_threadsafe(_answer, done, reply)

        # A daemon thread: a plan stuck in its own code must not keep the process from exiting.
        thread = threading.Thread(target=work, name="dry-run", daemon=True)
        thread.start()
        try:
            return await asyncio.wait_for(asyncio.shield(done), BUDGET_S + OVERRUN_S)
        except TimeoutError:
            if done.done():
                return done.result()
        # The simulation checks its bounds between messages only: a plan that does not
        # yield is stopped by an exception raised in its thread (at its next bytecode).
        _raise_in(thread, Overrun)
        try:
            return await asyncio.wait_for(asyncio.shield(done), OVERRUN_S)
        except TimeoutError:
            return EnvDryRunReply(
                success=False,
                msg="The plan is stuck in the dry run (in a call that cannot be stopped); "
                "further dry runs are refused until it ends or the environment is closed",
            )

    def _plan_running(self) -> bool:
        """The RunEngine is busy (a plan or a task of the main thread): share with it."""
        env = self.env
        return env.re_state() == "running" or env.env_state != "idle"

    def _simulate(self, req: EnvDryRun) -> EnvDryRunReply:
        from bluesky.utils import ensure_generator

        from services.worker.env.simulate import PlanSimulator

        env = self.env
        item = req.item
        name = item.get("name")
        lists = env.lists
        ns = env.ns
        if lists is None or not isinstance(name, str) or name not in lists.plans_existing:
            return EnvDryRunReply(
                success=False, msg=f"Plan {name!r} is not in the list of existing plans"
            )
        if name not in ns:
            return EnvDryRunReply(success=False, msg=f"Plan {name!r} is not in the namespace")
        args, kwargs = item.get("args") or [], item.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return EnvDryRunReply(success=False, msg="'args' must be a list and 'kwargs' a dict")
        uid = item.get("item_uid")
        try:
            allowed = set(lists.plans_existing) | set(lists.devices_existing)
            args, kwargs = resolve_args(args, kwargs, ns, allowed)
            plan = ensure_generator(ns[name](*args, **kwargs))
            report = PlanSimulator(plan_running=self._plan_running).run(plan, name)
        except Exception as e:
            logger.debug("dry run of '%s':\n%s", name, traceback.format_exc())
            logger.info("dry run of '%s' failed: %r", name, e, extra={"item_uid": uid})
            return EnvDryRunReply(
                success=False, msg=f"The plan failed in the dry run: {type(e).__name__}: {e}"
            )
        logger.info(
            "dry run of '%s': %d messages, %d points, %d limit violations, %.3f s",
            name,
            report.messages,
            report.num_points,
            len(report.violations),
            report.elapsed,
            extra={"item_uid": uid},
        )
        return EnvDryRunReply(report=report)


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise `exc` in `thread` at its next bytecode (CPython's PyThreadState_SetAsyncExc)."""
    if thread.ident is None or not thread.is_alive():
        return
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    if set_async_exc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc)) > 1:
        set_async_exc(ctypes.c_ulong(thread.ident), None)  # more than one: undo
    logger.warning("a dry run's plan did not come back within its bounds: stopping it")


def _answer(done: asyncio.Future[EnvDryRunReply], reply: EnvDryRunReply) -> None:
    if not done.done():
        done.set_result(reply)
