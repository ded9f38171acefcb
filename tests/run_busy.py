"""Run a command beside CPU-bound busy loops, as on a shared machine: `python -m tests.run_busy`.

The suite must hold on a busy machine; this is how that is checked. Prints the elapsed time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time


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
    try:
        rc = subprocess.call(args.command)
    finally:
        for loop in loops:
            loop.terminate()
            loop.join()
    print(
        f"run_busy: {args.command!r} beside {args.loops} busy loops: exit {rc} "
        f"in {time.monotonic() - t0:.0f} s",
        file=sys.stderr,
    )
    return rc


if __name__ == "__main__":
    sys.exit(main())
