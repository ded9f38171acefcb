"""Run a command beside CPU-bound busy loops, as on a shared machine: `python -m tests.run_busy`.

The suite must hold on a busy machine; this is how that is checked. Prints the elapsed time.
The command's output is passed through and read: a warning or traceback printed outside a
test's captured output (an unclosed socket found at exit, a task destroyed while pending,
an exception ignored in a finalizer) fails the run even when the command itself exits 0.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time

# What a clean run never prints: pytest captures the output of the tests themselves, and
# services log to files, so these come from interpreter exits and finalizers.
NOISE = (
    b"Traceback (most recent call last)",
    b"Exception ignored in",
    b"Task was destroyed but it is pending",
    b"ResourceWarning",
    b"was never awaited",
)


def spin() -> None:
    while True:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--loops", type=int, default=2, help="busy loops beside the command (2)")
    p.add_argument("command", nargs="+", help="the command to run, after --")
    args = p.parse_args()
    loops = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.loops)]
    for loop in loops:
        loop.start()
    t0 = time.monotonic()
    noise: list[bytes] = []
    try:
        with subprocess.Popen(args.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
            assert p.stdout is not None
            for line in p.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                if any(n in line for n in NOISE):
                    noise.append(line.rstrip())
            rc = p.wait()
    finally:
        for loop in loops:
            loop.terminate()
            loop.join()
    print(
        f"run_busy: {args.command!r} beside {args.loops} busy loops: exit {rc} "
        f"in {time.monotonic() - t0:.0f} s",
        file=sys.stderr,
    )
    if noise:
        print(f"run_busy: {len(noise)} lines of warnings or tracebacks at exit:", file=sys.stderr)
        for line in noise[:20]:
            print("  " + line.decode(errors="replace"), file=sys.stderr)
        return rc or 1
    print("run_busy: no warnings or tracebacks in the output", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
