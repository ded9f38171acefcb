"""The environment process as a child of the worker service."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from qserver.protocol.worker import StartupConfig
from services.runtime.procs import die_with_parent_hook


def env_argv(
    nats_url: str, prefix: str, env_uid: str, startup: StartupConfig, *extra: str
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
    ]
    if startup.startup_module:
        argv += ["--startup-module", startup.startup_module]
    elif startup.startup_script:
        argv += ["--startup-script", startup.startup_script]
    else:
        argv += ["--startup-dir", startup.startup_dir or ""]
    return argv + list(extra)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def is_env_process(pid: int, env_uid: str) -> bool:
    """True if `pid` is alive and is the environment process `env_uid` (Linux: /proc)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return env_uid.encode() in cmdline.split(b"\0")


class EnvProcess:
    """One environment process, with a thread blocked in waitpid that reports its exit.

    The child gets SIGKILL from the kernel when the thread that started it ends (Linux
    PR_SET_PDEATHSIG), so a killed worker service never leaves an unsupervised RunEngine.
    The worker must therefore start it from its main (event loop) thread
    (`die_with_parent_hook` refuses any other).
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
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for the worker's terminal does not pause it.
            start_new_session=True,
            preexec_fn=die_with_parent_hook(signal.SIGKILL),
        )
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
