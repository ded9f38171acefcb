"""Children that die with their parent (PR_SET_PDEATHSIG), and the thread that may start them."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from services.runtime.procs import die_with_parent_hook

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_thread_gone(thread: threading.Thread) -> None:
    """Until the kernel has ended the thread (join() returns a little before that)."""
    thread.join()
    task = Path(f"/proc/self/task/{thread.native_id}")
    deadline = time.monotonic() + 30
    while task.exists():
        assert time.monotonic() < deadline, "the thread did not end"
        time.sleep(0.01)


def test_a_child_started_from_a_thread_gets_the_death_signal_when_that_thread_ends() -> None:
    """Why only the main thread may start such a child: the kernel watches the thread."""
    prctl = ctypes.CDLL(None).prctl
    started: list[subprocess.Popen[bytes]] = []

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, as die_with_parent_hook does

    def start() -> None:
        started.append(subprocess.Popen(SLEEPER, preexec_fn=hook))

    thread = threading.Thread(target=start)
    thread.start()
    wait_thread_gone(thread)
    try:
        # This process lives on, yet its child is killed.
        assert started[0].wait(30) == -signal.SIGKILL
    finally:
        started[0].kill()
        started[0].wait()


def test_a_child_started_from_the_main_thread_outlives_the_other_threads() -> None:
    child = subprocess.Popen(SLEEPER, preexec_fn=die_with_parent_hook(signal.SIGKILL))
    try:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        wait_thread_gone(thread)
        # A SIGKILL sent when the thread ended would win over this SIGTERM.
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_only_the_main_thread_may_start_a_child_that_dies_with_its_parent() -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            die_with_parent_hook(signal.SIGKILL)
        except RuntimeError as e:
            errors.append(e)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert die_with_parent_hook(None) is None  # no death signal: any thread
