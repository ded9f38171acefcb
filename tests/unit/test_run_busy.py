"""`make test-busy`'s runner: a warning or traceback printed at exit fails the run."""

from __future__ import annotations

import subprocess
import sys


def run_busy(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.run_busy", "--loops", "0", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_clean_command_passes_and_its_output_is_passed_through() -> None:
    done = run_busy("print('1268 passed')")
    assert done.returncode == 0, done.stderr
    assert "1268 passed" in done.stdout
    assert "no warnings or tracebacks" in done.stderr


def test_an_exception_ignored_at_exit_fails_a_command_that_exits_0() -> None:
    code = (
        "import socket, warnings\n"
        "warnings.simplefilter('always')\n"
        "s = socket.socket()\n"
        "del s\n"  # an unclosed socket: a ResourceWarning on stderr
        "print('all passed')\n"
    )
    done = run_busy(code)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "ResourceWarning" in done.stderr


def test_a_failing_command_keeps_its_exit_code() -> None:
    assert run_busy("raise SystemExit(3)").returncode == 3
