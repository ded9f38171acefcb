"""Kernel mode: the environment's namespace lives in an IPython kernel (ADR 20).

The kernel runs on the environment's main thread; a scientist attaches to it with
`jupyter console --existing <connection file>`. Plans and foreground jobs from the queue run
on that same thread, inside the kernel: to run one, the environment "captures" the kernel by
sending it, through its own client on loopback, a cell that runs the execution loop
(`execution_loop`). While the loop runs, the kernel is busy and commands typed by a user wait
in the kernel's queue; while a user's command runs, the kernel is busy and the queue waits
(or is refused: "IPython kernel (RE Worker) is busy."). Same rules as the reference's worker.

`state` is the kernel's shell state as the reference reports it (`starting`, `idle`, `busy`;
`disabled` once it is shut down); `captured` is True while the execution loop holds the
kernel (until the kernel is idle again after it).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.worker.env.console import ConsoleSink, ConsoleTee

logger = logging.getLogger(__name__)

# The name of the execution loop in the kernel's namespace (hidden from `%who`).
LOOP_NAME = "__qserver_execution_loop__"
# How long a capture waits for the loop to start in the kernel.
CAPTURE_S = 3.0
# How long the loop holds the kernel, with nothing to run, after a reservation or a finished
# plan: the queue service sends the next item, or says "release", well within it.
HOLD_S = 5.0
POLL_S = 0.05
# Connection info keys of a Jupyter connection file (what `config_get` gives as
# `ip_connect_info`, and what `jupyter console --existing` reads).
CONNECTION_KEYS = (
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "ip",
    "key",
    "transport",
    "signature_scheme",
    "kernel_name",
)

Job = Callable[[], None]


class LettingGo:
    """A job after which the execution loop gives the kernel back at once.

    For a foreground task: it runs only while the manager is idle, so no queue item waits for
    the loop that holds the kernel, and the queue service would only say "release" (a round
    trip later; the reference's loop stops as the task ends).
    """

    def __init__(self, job: Job) -> None:
        self.job = job

    def __call__(self) -> None:
        self.job()


def connection_file(directory: Path, env_uid: str) -> Path:
    """The connection file of the environment `env_uid`'s kernel."""
    return directory / f"kernel-{env_uid[:8]}.json"


class KernelConsoleTee(ConsoleTee):
    """The console tee around the kernel's own stream (which consoles attached read)."""

    def __getattr__(self, name: str) -> Any:
        if name == "original":
            raise AttributeError(name)
        # ipykernel calls its stream's own methods (set_parent, ...) on sys.stdout.
        return getattr(self.original, name)


class KernelHost:
    """The IPython kernel of one environment process, and its execution loop."""

    def __init__(
        self,
        directory: Path,
        env_uid: str,
        jobs: queue.Queue[Job | None],
        run_job: Callable[[Job], float],
        on_change: Callable[[], None],
    ) -> None:
        self.directory = directory
        self.connection_file = connection_file(directory, env_uid)
        self.jobs = jobs
        self._run_job = run_job  # runs one job; returns how long to hold the kernel after it
        self._on_change = on_change
        self._cond = threading.Condition()
        self.state = "starting"
        self.captured = False
        self._active = False  # the execution loop runs
        self._release = False
        self._hold_until = 0.0
        self._shut_down = False
        self.app: Any = None
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ----- start -----

    def create(self, ns: dict[str, Any], sink: ConsoleSink) -> None:
        """Bind the kernel's sockets on loopback and write the connection file (main thread).

        `ns` becomes the kernel's namespace: the startup code is run into it afterwards.
        """
        from ipykernel.ipkernel import IPythonKernel
        from ipykernel.kernelapp import IPKernelApp

        host = self

        class QServerKernel(IPythonKernel):  # type: ignore[misc]
            """Reports when its main shell handles a request (busy) and when it is done."""

            def pre_handler_hook(self) -> None:
                if threading.current_thread() is threading.main_thread():
                    host._shell(busy=True)
                super().pre_handler_hook()

            def post_handler_hook(self) -> None:
                super().post_handler_hook()
                if threading.current_thread() is threading.main_thread():
                    host._shell(busy=False)

        # Kernel state and history are ours, not the user's `~/.ipython` (whose startup
        # files would run in the environment); the directory is the user's alone.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        (self.directory / "ipython").mkdir(mode=0o700, exist_ok=True)
        # Plots are not shown anywhere: no inline images on every console (as the reference).
        os.environ.setdefault("MPLBACKEND", "agg")
        app = IPKernelApp.instance(user_ns=ns)
        app.kernel_class = QServerKernel
        app.ipython_dir = str(self.directory / "ipython")
        app.connection_dir = str(self.directory)
        app.connection_file = str(self.connection_file)
        app.ip = "127.0.0.1"  # loopback only: see docs/deploy.md for who can attach
        app.transport = "tcp"
        # Output goes to the attached consoles and (echoed) to the process's own stdout, which
        # the worker's log and the console stream get; fd capture would take it twice.
        app.capture_fd_output = False
        app.quiet = False
        app.log_level = logging.WARNING
        self.connection_file.unlink(missing_ok=True)  # a new key and new ports every time
        app.initialize([])
        os.chmod(self.connection_file, 0o600)
        # Also when the startup code fails and the kernel never runs.
        atexit.register(self.connection_file.unlink, missing_ok=True)
        self.app = app
        # The kernel replaced sys.stdout/stderr with its streams: tee them to the console.
        sys.stdout = KernelConsoleTee(sys.stdout, sink)
        sys.stderr = KernelConsoleTee(sys.stderr, sink)
        shell = app.shell
        assert shell is not None, "the IPython kernel has a shell"
        shell.push({LOOP_NAME: self.execution_loop}, interactive=False)
        self._connect_client()

    def _connect_client(self) -> None:
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient()
        client.load_connection_info(self.connect_info())  # type: ignore[arg-type]
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=True)
        self._client = client

    def connect_info(self) -> dict[str, Any]:
        """The connection file's content: what `jupyter console --existing` needs."""
        info = self.app.get_connection_info()
        key = info.get("key", b"")
        info["key"] = key.decode() if isinstance(key, bytes) else key
        info.setdefault("kernel_name", "")
        return {k: info[k] for k in CONNECTION_KEYS if k in info}

    def run(self) -> None:
        """Serve the kernel on the main thread until it is shut down."""
        from tornado import ioloop

        ioloop.IOLoop.current().add_callback(self._ready)
        try:
            self.app.start()
        finally:
            self.connection_file.unlink(missing_ok=True)  # its key opens nothing any more
            with self._cond:
                self._shut_down = True
                self.state = "disabled"
                self.captured = False
            self._on_change()
            self._close_client()

    def _ready(self) -> None:
        with self._cond:
            if self.state == "starting":
                self.state = "idle"
        logger.info("IPython kernel is ready: connection file %s", self.connection_file)
        self._on_change()

    def _shell(self, *, busy: bool) -> None:
        with self._cond:
            self.state = "busy" if busy else "idle"
            if not busy and not self._active:
                self.captured = False
        self._on_change()

    # ----- the execution loop -----

    def busy_elsewhere(self) -> bool:
        """A user's command (not the execution loop) keeps the kernel busy."""
        with self._cond:
            return self.state != "idle" and not self._active

    def reserve(self, timeout: float = CAPTURE_S) -> str | None:
        """Capture the kernel (or keep holding it) for jobs to come; None, or why not."""
        with self._cond:
            if self._active:
                self._release = False
                self._hold_until = max(self._hold_until, time.monotonic() + HOLD_S)
                return None
            if self._shut_down:
                return "The IPython kernel is shut down"
            if self.state != "idle":
                return "IPython kernel (RE Worker) is busy."
        self._execute(f"{LOOP_NAME}()")
        with self._cond:
            if self._cond.wait_for(lambda: self._active, timeout):
                return None
        return (
            "Failed to capture IPython kernel: "
            "Timeout occurred while trying to reserve IPython kernel"
        )

    def submit(self, job: Job) -> str | None:
        """Run `job` in the execution loop, capturing the kernel first; None, or why not.

        Blocking (up to CAPTURE_S): call it off the NATS thread.
        """
        refused = self.reserve()
        if refused is not None:
            return refused
        with self._cond:
            if not self._active:  # ended just now (an interrupt): the job was not taken
                return "Failed to capture IPython kernel: the execution loop ended"
            self.jobs.put(job)
            self._release = False
        return None

    def release(self) -> None:
        """Let the execution loop end once it has nothing to run (the queue service's call)."""
        with self._cond:
            self._release = True

    def execution_loop(self) -> None:
        """Run jobs in the kernel (the main thread) until released or the hold expires."""
        with self._cond:
            if self._active:
                return
            self._active = self.captured = True
            self._release = False
            self._hold_until = time.monotonic() + HOLD_S
            self._cond.notify_all()
        self._on_change()
        try:
            while True:
                try:
                    job = self.jobs.get(timeout=POLL_S)
                except queue.Empty:
                    with self._cond:
                        now = time.monotonic()
                        if self.jobs.empty() and (self._release or now >= self._hold_until):
                            self._active = False
                            return
                    continue
                except KeyboardInterrupt:
                    # An interrupt aimed at the kernel while the loop waits: give it back.
                    with self._cond:
                        if self.jobs.empty():
                            self._active = False
                            return
                    continue
                if job is None:
                    continue  # closing is a kernel shutdown in this mode
                hold = self._run_job(job)
                with self._cond:
                    self._hold_until = time.monotonic() + hold
                    if hold <= 0:
                        self._release = True
                    if self._release and self.jobs.empty():
                        self._active = False  # let go now, not after a poll
                        return
        finally:
            with self._cond:
                self._active = False
            self._on_change()

    # ----- commands from the NATS thread -----

    def _execute(self, code: str) -> None:
        with self._client_lock:
            client = self._client
            if client is None:
                return
            # Replies to earlier cells are not needed: drop them so that none piles up.
            with contextlib.suppress(Exception):
                while True:
                    client.get_shell_msg(timeout=0)
            client.execute(code, silent=True, store_history=False, allow_stdin=False)

    def interrupt(self) -> None:
        """Send an interrupt request on the control channel, as `jupyter console` does."""
        with self._client_lock:
            client = self._client
            if client is None:
                raise RuntimeError("the IPython kernel is shut down")
            msg = client.session.msg("interrupt_request", content={})
            client.control_channel.send(msg)

    def shutdown(self) -> None:
        """Stop the kernel: `run` returns once the execution loop (if any) has ended."""
        self.release()
        with self._client_lock:
            client = self._client
            if client is not None:
                with contextlib.suppress(Exception):
                    client.shutdown()
        app = self.app
        if app is not None and app.io_loop is not None:
            # Also without the control channel (its thread busy): stop the main loop.
            app.io_loop.add_callback(app.io_loop.stop)

    def _close_client(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop_channels()


def pause_on_interrupt(run_engine: Any) -> None:
    """Give the RunEngine bluesky's Ctrl-C handling (pause, then pause now) if it has none.

    In kernel mode an interrupt (Ctrl-C in a console, `kernel_interrupt`) reaches whatever the
    kernel runs; a RunEngine without `SigintHandler` would be left panicked by it.
    """
    from bluesky.utils import SigintHandler

    managers = getattr(run_engine, "context_managers", None)
    if isinstance(managers, list) and SigintHandler not in managers:
        managers.append(SigintHandler)
        logger.info("kernel mode: the RunEngine pauses on an interrupt (bluesky's SigintHandler)")
