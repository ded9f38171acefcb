"""What a command line needs of the configuration: the file's option and variable, on/off words.

No msgspec here: the stack's supervisor imports this and checks a configuration file in a
child process (ADR 34). The typed tree, the file's loading and checking are in
`qserver.config`, which re-exports these names.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

CONFIG_ENV = "QSERVER_CONFIG"


class ConfigError(ValueError):
    """The message names the key (or variable) and what was expected."""


def switch(text: str) -> bool:
    """An on/off value as the reference's options take it (`ON`, `OFF`, `true`, `0`, ...)."""
    value = text.strip().lower()
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no", ""):
        return False
    raise ValueError(f"expected ON or OFF, not {text!r}")


def config_path(argv: list[str], environ: Mapping[str, str]) -> str | None:
    """`--config FILE` / `--config=FILE` from a command line, else `$QSERVER_CONFIG`."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return environ.get(CONFIG_ENV) or None


def add_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get(CONFIG_ENV),
        help="YAML configuration (docs/configuration.md); the environment and flags override "
        f"it (${CONFIG_ENV})",
    )
