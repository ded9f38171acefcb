"""The environment process: started by this worker service, or adopted from a previous one.

The environment is not tied to the worker's life: it runs in a session of its own and
outlives a worker that crashes, so that a restarted worker can adopt it (ADR 12). A child
is watched by a thread blocked in waitpid; an adopted one (not our child) through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from qserver.protocol.worker import StartupConfig
from services.worker.pids import is_env_process

logger = logging.getLogger(__name__)


def env_argv(
    nats_url: str, prefix: str, env_uid: str, worker: str, startup: StartupConfig, *extra: str
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "services.worker.env",
        "--nats-url",
        nats_url,
        "--prefix",
        prefix,
        "--env-uid",
        env_uid,
        "--worker-id",
        worker,
    ]
    if startup.startup_module:
        argv += ["--startup-module", startup.startup_module]
    elif startup.startup_script:
        argv += ["--startup-script", startup.startup_script]
    else:
        argv += ["--startup-dir", startup.startup_dir or ""]
    return argv + list(extra)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown: not started by this worker service"
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class EnvProcess:
    """One environment process started here, with a thread blocked in waitpid for its exit.

    It runs in a session of its own (a Ctrl-C meant for the worker's terminal does not
    reach it) and is not killed with the worker: an environment left without a worker
    finishes its plan and then closes itself, unless a restarted worker adopts it.
    """

    def __init__(self, env_uid: str, popen: subprocess.Popen[bytes]) -> None:
        self.env_uid = env_uid
        self.popen = popen
        self.returncode: int | None = None
        self.exited = asyncio.Event()
        # Why this service killed it ("destroy", "stop"): its end is no error. None: it
        # ended by itself, or something else killed it.
        self.killed_for: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        env_uid: str,
        on_exit: Callable[[EnvProcess, int], None],
        loop: asyncio.AbstractEventLoop,
    ) -> EnvProcess:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        proc = cls(env_uid, popen)
        threading.Thread(
            target=proc._wait, args=(on_exit, loop), name=f"env-{popen.pid}", daemon=True
        ).start()
        return proc

    def _wait(
        self, on_exit: Callable[[EnvProcess, int], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        rc = self.popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting
            loop.call_soon_threadsafe(on_exit, self, rc)

    def kill(self, why: str) -> None:
        self.killed_for = why
        # send_signal does nothing once the process has been reaped (no recycled pid).
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGKILL)


class AdoptedEnv:
    """An environment process that a previous worker service started, watched by a pidfd.

    Its exit status cannot be known (only its parent may collect it): `returncode` stays
    None. The pidfd names this process and no later one with the same pid, so `kill` can
    never hit another process.
    """

    def __init__(self, env_uid: str, pid: int, pidfd: int) -> None:
        self.env_uid = env_uid
        self.pid = pid
        self._pidfd: int | None = pidfd
        self.returncode: int | None = None
        self.exited = asyncio.Event()
        self.killed_for: str | None = None

    @classmethod
    def watch(
        cls,
        env_uid: str,
        pid: int,
        on_exit: Callable[[AdoptedEnv, int | None], None],
        loop: asyncio.AbstractEventLoop,
    ) -> AdoptedEnv | None:
        """Watch the environment `env_uid` at `pid`; None if that process is gone."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # ProcessLookupError, or a kernel without pidfds
            return None
        # Checked after the pidfd is open: from now on `pid` cannot be a recycled one.
        if not is_env_process(pid, env_uid):
            os.close(pidfd)
            return None
        proc = cls(env_uid, pid, pidfd)
        loop.add_reader(pidfd, proc._on_readable, on_exit, loop)
        return proc

    def _on_readable(
        self,
        on_exit: Callable[[AdoptedEnv, int | None], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if self._pidfd is None:
            return
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        on_exit(self, None)

    def kill(self, why: str) -> None:
        self.killed_for = why
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)


async def kill_env(pid: int, env_uid: str, wait_s: float) -> None:
    """SIGKILL the environment `env_uid` at `pid` (not another process) and wait for its end."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if not is_env_process(pid, env_uid):
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        deadline = time.monotonic() + wait_s
        while is_env_process(pid, env_uid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        os.close(pidfd)
