"""The environment's state and the main-thread loop that runs plans on the RunEngine.

Commands arrive on the NATS thread (see `commands.py`): they check and change the state
under a lock and queue jobs; the main thread runs the jobs, because the RunEngine must be
driven from the thread that called it. Every state change is published in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from bluesky.utils import RunEngineInterrupted

from qserver.jsutil import default_replicas
from qserver.plan_tools.describe import describe_devices, describe_plans
from qserver.plan_tools.resolve import resolve_args
from qserver.protocol.items import ExitStatus, HistoryResult
from qserver.protocol.subjects import Subjects
from qserver.protocol.tasks import TaskInfo
from qserver.protocol.worker import EnvStateName, ExistingLists, PlanResult, StartupConfig
from qserver.result_texts import MSG_KEPT, TRACEBACK_KEPT, cut
from services.runtime.progress_stream import ensure_progress_stream_logged
from services.runtime.service_base import encode
from services.worker.env import live_docs, metadata
from services.worker.env.console import ConsoleSink
from services.worker.env.journal import DocumentJournal
from services.worker.env.kernel import HOLD_S, KernelHost, LettingGo, pause_on_interrupt
from services.worker.env.link import NatsLink
from services.worker.env.progress import ProgressPublisher
from services.worker.env.runs import RunTracker
from services.worker.env.startup import (
    StartupError,
    find_run_engine,
    kernel_namespace,
    load_startup,
)
from services.worker.messages import EnvStatus
from services.worker.results import publish_result

logger = logging.getLogger(__name__)

LISTS_OBJECT = "existing"
# How long a finished item's result waits for its documents to be stored while the document
# stream acknowledges nothing (and NATS is connected): then the result says what is missing.
DOCS_STALL_S = 10.0
# What an action on a paused plan means for the item when it returns normally.
CONTINUE_STATUS: dict[str, ExitStatus] = {
    "resume": "completed",
    "stop": "stopped",
    "abort": "aborted",
    "halt": "halted",
}
# Kernel mode: the outcome of a paused plan that a console finished, from its runs' exit
# statuses (the reference's rule: a clean end may have been a stop, so it is "unknown").
OUTSIDE_MSG = "The plan is completed outside RE Manager"

Job = Callable[[], None]


@dataclass
class Running:
    """The item being executed (running or paused)."""

    item: dict[str, Any]
    user_group: str
    time_start: float

    @property
    def uid(self) -> str:
        return str(self.item["item_uid"])


def merge_meta(meta: Any) -> dict[str, Any]:
    """A dict or a list of dicts; where keys repeat, the earlier dict wins."""
    metas = meta if isinstance(meta, list) else [meta] if meta else []
    md: dict[str, Any] = {}
    for m in reversed(metas):
        if not isinstance(m, dict):
            raise TypeError(f"'meta' must be a dict or a list of dicts, not {type(m).__name__}")
        md.update(m)
    return md


class Environment:
    """Startup code, RunEngine and state of one environment process."""

    def __init__(
        self,
        subjects: Subjects,
        env_uid: str,
        link: NatsLink,
        startup: StartupConfig,
        device_max_depth: int = 5,
        journal: DocumentJournal | None = None,
        kernel_dir: Path | None = None,
    ) -> None:
        self.subjects = subjects
        self.env_uid = env_uid
        self.link = link
        self.startup = startup
        self.device_max_depth = device_max_depth
        self.journal = journal  # subscribed to the RunEngine when it is found
        self._refused_before = 0  # the journal's refusals when the running item started
        self.lock = threading.RLock()
        self.env_state: EnvStateName = "initializing"
        self.running: Running | None = None
        self.pause_pending = False
        self.continue_pending = False
        # Set while a finished item's result is being stored (the item is still running).
        self.result_pending = False
        self.lists: ExistingLists | None = None
        self.error_msg = ""
        self.error_traceback = ""
        self.owner = ""  # the worker service instance that supervises this environment
        self.ns: dict[str, Any] = {}
        self.RE: Any = None
        self.runs = RunTracker(self.notify)
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        # Tasks (services/worker/env/tasks.py): the foreground one, those in the background,
        # how many started and how many finished with their results stored.
        self.running_task: TaskInfo | None = None
        self.background: dict[str, TaskInfo] = {}
        self.tasks_started = 0
        self.tasks_done = 0
        # Set when the state changed; the publisher on the NATS thread sends a fresh snapshot.
        self.changed = asyncio.Event()
        # Kernel mode (ADR 20): the namespace is an IPython kernel's, jobs run in its loop.
        self.kernel = (
            KernelHost(kernel_dir, env_uid, self.jobs, self._run_job, self._kernel_changed)
            if kernel_dir is not None
            else None
        )
        self.console: ConsoleSink | None = None  # the console's sink, for the kernel's streams
        # Publishes the console output buffered so far (on the NATS loop): before a result.
        self.flush_console: Callable[[], Awaitable[None]] | None = None
        self._opened = False

    # ----- state -----

    def re_state(self) -> str | None:
        return str(self.RE.state) if self.RE is not None else None

    def snapshot(self) -> EnvStatus:
        re_state = self.re_state()  # not under our lock: see `_on_re_state`
        k = self.kernel
        with self.lock:
            return EnvStatus(
                env_uid=self.env_uid,
                pid=os.getpid(),
                env_state=self.env_state,
                re_state=re_state,
                running_item_uid=self.running.uid if self.running else None,
                pause_pending=self.pause_pending,
                run_list=self.runs.runs(),
                run_list_uid=self.runs.list_uid,
                lists_uid=self.lists.uid if self.lists else "",
                docs_pending=self.journal.pending if self.journal else 0,
                docs_failed=self.journal.failed if self.journal else 0,
                running_task=self.running_task,
                background=list(self.background.values()),
                tasks_started=self.tasks_started,
                tasks_done=self.tasks_done,
                msg=self.error_msg,
                traceback=self.error_traceback,
                owner=self.owner,
                ip_kernel_state=k.state if k else None,
                ip_kernel_captured=k.captured if k else None,
            )

    def notify(self) -> None:
        """Have the state published soon (from any thread, never blocking)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
            self.link.soon(self.changed.set)

    async def publish_state(self) -> None:
        """Publish the state now (on the NATS thread): for changes whose order matters."""
        self.changed.clear()
        try:
            await self.link.nc.publish(self.subjects.env_state, encode(self.snapshot()))
        except Exception as e:  # reconnecting: the next change or heartbeat goes out
            logger.debug("state not published: %r", e)

    def _on_re_state(self, new: Any, old: Any) -> None:
        # Called on the RunEngine's thread, maybe holding the RunEngine's state lock: it takes
        # no lock of ours (others take ours, then read the RunEngine's state), never raises.
        try:
            if str(new) == "paused":
                self.pause_pending = False
            elif str(new) in ("idle", "panicked") and self.kernel is not None:
                self._check_outside(str(new))
            self.notify()
        except Exception:
            logger.exception("state change %s -> %s not reported", old, new)

    # ----- kernel mode -----

    def _kernel_changed(self) -> None:
        if self.kernel is not None and self.kernel.state == "idle" and self._opened:
            with self.lock:
                if self.env_state == "initializing":
                    self.env_state = "idle"
                    logger.info("IPython kernel is in 'idle' state")
        self.notify()

    def _check_outside(self, re_state: str) -> None:
        """A paused plan that a console resumed (or stopped) may have ended (RE thread).

        The queue did not run it to its end, so the environment reports the item itself,
        as the reference's worker does for such "abandoned" plans. Checked on a thread of
        its own: this one may hold the RunEngine's state lock.
        """
        threading.Thread(
            target=self._finish_outside, args=(re_state,), name="outside", daemon=True
        ).start()

    def _finish_outside(self, re_state: str) -> None:
        with self.lock:
            cur = self.running
            if (
                cur is None
                or self.env_state != "idle"  # our loop runs it: `_execute` reports it
                or self.continue_pending
                or self.result_pending
            ):
                return
            self.result_pending = True
        statuses = {r.exit_status for r in self.runs.runs()}
        status: ExitStatus = "unknown"
        if "fail" in statuses or re_state == "panicked":
            status = "failed"
        elif "abort" in statuses:
            status = "aborted"
        logger.info("item %s was finished from the IPython kernel: %s", cur.uid, status)
        self._finish(cur, status, OUTSIDE_MSG, outside=True)

    def submit(self, job: Job) -> str | None:
        """Have the main thread run `job`; None, or why it cannot (kernel mode: blocking)."""
        if self.kernel is None:
            self.jobs.put(job)
            return None
        return self.kernel.submit(job)

    def _run_job(self, job: Job) -> float:
        """Run one job in the kernel's execution loop; how long to hold the kernel after it.

        A paused plan frees the kernel at once (the user may resume it from a console); a
        finished one holds it for the queue's next item, until the queue says "release".
        """
        try:
            job()
        except (Exception, KeyboardInterrupt):  # an interrupt between a plan's steps
            logger.exception("job failed")
        if isinstance(job, LettingGo):
            return 0.0
        with self.lock:
            return 0.0 if self.running is not None else HOLD_S

    # ----- opening -----

    def open(self) -> bool:
        """Run the startup code and store the lists; False (state `failed`) if that fails."""
        self.notify()
        # Made before any plan runs, so that its last progress event is kept (ADR 25).
        self.link.spawn(ensure_progress_stream_logged(self.link.js, self.subjects))
        try:
            ns = load_startup(self.startup, self._kernel_namespace())
            logger.info("Startup code was successfully loaded.")
            logger.info("Instantiating and configuring Run Engine ...")
            run_engine = find_run_engine(ns)
            self._persist_metadata(run_engine)
            self._attach(run_engine)
            if self.kernel is not None:
                pause_on_interrupt(run_engine)
            self.ns, self.RE = ns, run_engine
            self.store_lists()
        except Exception as e:
            tb = traceback.format_exc()
            logger.error(
                "Failed to start RE Worker environment. Error while loading startup code:\n%s\n",
                tb,
            )
            msg = (
                str(e)
                if isinstance(e, StartupError)
                else f"Error in startup code: {type(e).__name__}: {e}"
            )
            # Cut like a plan's report, so that the state message always fits (ADR 8).
            whole_at = "the environment's console output"
            with self.lock:
                self.env_state = "failed"
                self.error_msg = cut(msg, MSG_KEPT, whole_at)
                self.error_traceback = cut(tb, TRACEBACK_KEPT, whole_at)
            self.notify()
            return False
        self._opened = True
        if self.kernel is None:
            with self.lock:
                self.env_state = "idle"
        else:  # idle once the kernel is (it may run a command a user sent meanwhile)
            self._kernel_changed()
        logger.info("RE Environment is ready")
        self.notify()
        return True

    def _kernel_namespace(self) -> dict[str, Any] | None:
        """Kernel mode: start the kernel, whose namespace the startup code runs in."""
        if self.kernel is None:
            return None
        ns: dict[str, Any] = {}
        assert self.console is not None, "the console is captured before the kernel starts"
        self.kernel.create(ns, self.console)
        return kernel_namespace(ns)

    def _persist_metadata(self, run_engine: Any) -> None:
        try:
            metadata.persist(run_engine, self.link, self.subjects.re_md_bucket)
        except Exception as e:
            raise StartupError(f"RE.md could not be read from the state store: {e}") from e

    def _attach(self, run_engine: Any) -> None:
        previous = run_engine.state_hook

        def hook(new: Any, old: Any) -> None:
            if previous is not None:
                try:
                    previous(new, old)
                except Exception:
                    logger.exception("the startup code's RunEngine state hook failed")
            self._on_re_state(new, old)

        run_engine.state_hook = hook
        self.runs.subscribe(run_engine)
        if self.journal is not None:
            run_engine.subscribe(self.journal)
        if live_docs.enabled():
            run_engine.subscribe(live_docs.NatsDocuments(self.link, self.subjects))
        run_engine.subscribe(ProgressPublisher(self.link, self.subjects))

    def describe(self) -> ExistingLists:
        ns = dict(self.ns)  # a background script may change the namespace meanwhile
        plans = describe_plans(ns)
        devices = describe_devices(ns, self.device_max_depth)
        old = self.lists
        same_plans = old is not None and old.plans_uid and old.plans_existing == plans
        same_devices = old is not None and old.devices_uid and old.devices_existing == devices
        return ExistingLists(
            plans_existing=plans,
            devices_existing=devices,
            uid=str(uuid.uuid4()),
            plans_uid=old.plans_uid if same_plans and old else str(uuid.uuid4()),
            devices_uid=old.devices_uid if same_devices and old else str(uuid.uuid4()),
        )

    def update_lists(self) -> None:
        """Describe the namespace again; store the lists only if they changed (blocking)."""
        lists = self.describe()
        old = self.lists
        if old is not None and (lists.plans_uid, lists.devices_uid) == (
            old.plans_uid,
            old.devices_uid,
        ):
            logger.info("the plans and devices did not change")
            return
        self.store_lists(lists)
        self.notify()

    def script_root(self) -> str | None:
        """Where scripts import local modules from: the startup directory or script's."""
        if self.startup.startup_dir:
            return os.path.abspath(self.startup.startup_dir)
        if self.startup.startup_script:
            return os.path.dirname(os.path.abspath(self.startup.startup_script))
        return None

    def take_run_engine(self) -> None:
        """Use the `RE` of the namespace from now on, if a script replaced it."""
        new = self.ns.get("RE")
        if new is self.RE:
            return
        if self.running is not None:
            logger.warning("RE was replaced while a plan runs: the plan goes on with the old one")
            return
        from bluesky import RunEngine

        if not isinstance(new, RunEngine):
            logger.warning("RE in the namespace is not a RunEngine: no plan can run until it is")
            self.RE = None
        else:
            self._persist_metadata(new)
            self._attach(new)
            self.RE = new
            logger.info("the RunEngine (RE) was replaced")
        self.notify()

    def store_lists(self, lists: ExistingLists | None = None) -> None:
        """Describe the namespace and store the lists in the object store (blocking)."""
        lists = lists or self.describe()
        self.link.call(self.put_lists(lists), timeout=30.0)

    async def put_lists(self, lists: ExistingLists) -> None:
        store = await self.link.js.create_object_store(
            self.subjects.lists_bucket, replicas=default_replicas()
        )
        await store.put(LISTS_OBJECT, encode(lists))
        with self.lock:
            self.lists = lists
        logger.info(
            "stored %d plans and %d devices (lists %s)",
            len(lists.plans_existing),
            len(lists.devices_existing),
            lists.uid,
        )

    # ----- the main thread -----

    def serve(self) -> None:
        """Run jobs until `close`; must be called on the main thread."""
        if self.kernel is not None:
            self.kernel.run()  # jobs run in the kernel's execution loop
            return
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a bug here must not end the environment mid-plan
                logger.exception("job failed")

    def start_run(self, running: Running) -> str | None:
        return self.submit(lambda: self._run(running))

    def start_continue(self, action: str) -> str | None:
        return self.submit(lambda: self._continue(action))

    def request_close(self) -> None:
        if self.kernel is not None:
            self.kernel.shutdown()  # `serve` returns once the kernel has stopped
        else:
            self.jobs.put(None)

    def _run(self, cur: Running) -> None:
        self.runs.reset()
        self._refused_before = self.journal.failed if self.journal else 0
        try:
            call = self._prepare(cur)
        except (Exception, KeyboardInterrupt) as e:  # an interrupt in kernel mode
            logger.error("The plan failed: %s", f"Plan failed: {e}", extra={"item_uid": cur.uid})
            self._finish(cur, "failed", f"Plan failed: {e}", traceback.format_exc())
            return
        logger.info("Starting a plan '%s'.", cur.item.get("name"), extra={"item_uid": cur.uid})
        self._execute(cur, call, "completed")

    def _prepare(self, cur: Running) -> Callable[[], Any]:
        item = cur.item
        name = item.get("name")
        lists = self.lists
        assert lists is not None
        if not isinstance(name, str) or name not in lists.plans_existing or name not in self.ns:
            raise ValueError(f"Plan {name!r} is not in the list of existing plans")
        args, kwargs = item.get("args") or [], item.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise TypeError("'args' must be a list and 'kwargs' a dict")
        allowed = set(lists.plans_existing) | set(lists.devices_existing)
        args, kwargs = resolve_args(args, kwargs, self.ns, allowed)
        md = merge_meta(item.get("meta"))
        md.update(
            qserver_item_uid=cur.uid,
            qserver_user=item.get("user"),
            qserver_user_group=cur.user_group,
        )
        plan = self.ns[name](*args, **kwargs)
        return lambda: self.RE(plan, **md)

    def _continue(self, action: str) -> None:
        cur = self.running
        with self.lock:
            self.continue_pending = False
            if cur is not None:
                self.env_state = "executing_plan"
        if cur is None:
            return
        self.notify()
        logger.info(
            "Continue plan execution with the option '%s'", action, extra={"item_uid": cur.uid}
        )
        self._execute(cur, getattr(self.RE, action), CONTINUE_STATUS[action])

    def _execute(self, cur: Running, call: Callable[[], Any], status: ExitStatus) -> None:
        try:
            call()
        except RunEngineInterrupted:
            # A pause: the item stays, waiting for resume, stop, abort or halt.
            with self.lock:
                self.env_state = "idle"
                self.pause_pending = False
            logger.info("The plan is paused ...", extra={"item_uid": cur.uid})
            self.notify()
            return
        except (Exception, KeyboardInterrupt) as e:
            logger.error("The plan failed: %s", f"Plan failed: {e}", extra={"item_uid": cur.uid})
            self._finish(cur, "failed", f"Plan failed: {e}", traceback.format_exc())
            return
        self._finish(cur, status)

    def _finish(
        self,
        cur: Running,
        status: ExitStatus,
        msg: str = "",
        tb: str = "",
        *,
        outside: bool = False,
    ) -> None:
        runs = self.runs.runs()
        result = PlanResult(
            record_uid=str(uuid.uuid4()),
            item_uid=cur.uid,
            env_uid=self.env_uid,
            result=HistoryResult(
                exit_status=status,
                run_uids=[r.uid for r in runs],
                scan_ids=[r.scan_id for r in runs if r.scan_id is not None],
                time_start=cur.time_start,
                time_stop=time.time(),
                msg=msg,
                traceback=tb,
            ),
            completed_outside=outside,
        )
        # Said before the result goes out: whoever reads it may print the next lines.
        if status != "failed":  # a failure was said with its reason
            logger.info("The plan was exited. Plan state: %s", status, extra={"item_uid": cur.uid})
        with self.lock:
            self.result_pending = True
        self.link.call(self._store_result(result))

    async def _store_result(self, result: PlanResult) -> None:
        # The item's documents are stored before its result: a run of an item that history
        # calls completed is in the document stream, so it reaches the catalog (ADR 10).
        result = await self._with_documents_stored(result)
        # What the plan printed goes out before its result: a reader that saw the plan end
        # finds its last lines in the console (ADR 18).
        if self.flush_console is not None:
            await self.flush_console()
        # The result is stored before the state says idle: a death in between is seen by
        # the worker as a death mid-plan, and it checks the stream first.
        await publish_result(self.link.js, self.subjects, result)
        with self.lock:
            self.result_pending = False
            self.running = None
            self.env_state = "idle"
            self.pause_pending = False
            self.continue_pending = False
        self.runs.reset(notify=False)
        await self.publish_state()

    async def _with_documents_stored(self, result: PlanResult) -> PlanResult:
        if self.journal is None or not result.result.run_uids:
            return result
        missing = await self.journal.wait_stored(DOCS_STALL_S)
        refused = self.journal.failed - self._refused_before
        notes = []
        if refused:
            notes.append(
                f"{refused} documents of the runs could not be kept for the catalog and Kafka "
                "(see the console)"
            )
        if missing:
            notes.append(
                f"{missing} documents of the runs were not stored in the document stream "
                f"within {DOCS_STALL_S:g} s (they may reach the catalog later)"
            )
        if not notes:
            return result
        note = "; ".join(notes)
        logger.warning("item %s: %s", result.item_uid, note)
        msg = f"{result.result.msg}\n{note}" if result.result.msg else note
        return msgspec.structs.replace(
            result, result=msgspec.structs.replace(result.result, msg=msg)
        )

    # ----- closing -----

    def idle(self) -> bool:
        """Nothing runs, nothing is paused, no result waits to be stored (and, in kernel
        mode, no command a user typed runs)."""
        re_state = self.re_state()  # not under our lock: see `_on_re_state`
        if self.kernel is not None and self.kernel.busy_elsewhere():
            return False
        with self.lock:
            return (
                self.env_state == "idle"
                and self.running is None
                and not self.result_pending
                and re_state == "idle"
            )

    def begin_close(self) -> str | None:
        """Mark the environment `closing` if it is idle; else why it is not (and no change)."""
        re_state = self.re_state()
        if self.kernel is not None and self.kernel.busy_elsewhere():
            return "Worker IPython kernel is busy"
        with self.lock:
            # Without a RunEngine (a script replaced RE by something else) it may close.
            if (
                self.env_state != "idle"
                or self.running is not None
                or re_state not in ("idle", None)
            ):
                return (
                    f"Environment is not idle: environment state is '{self.env_state}', "
                    f"RE state is '{re_state}'"
                )
            self.env_state = "closing"
        return None

    def closed(self) -> None:
        with self.lock:
            self.env_state = "closed"
        logger.info("Run Engine environment was closed successfully")
        self.notify()
