"""The `qserver` command line: keyword commands, the v0.0.1 `-c` form, monitor and stack.

`import qserver.cli` must stay fast, so the NATS client is imported only when a request is
sent (a test checks this).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from qserver.cli.commands import cli
from qserver.cli.runner import run_command

__all__ = ["cli", "main", "run"]


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on `argv` and return its exit code (0-4)."""
    return run_command(cli, argv)
