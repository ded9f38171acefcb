"""Load startup code into one namespace: a directory of files, a module or a script."""

from __future__ import annotations

import builtins
import importlib
import sys
from pathlib import Path
from typing import Any

from qserver.protocol.worker import StartupConfig


class StartupError(Exception):
    """The startup code raised, or did not create what the environment needs."""


def _fresh_namespace() -> dict[str, Any]:
    # What the reference offers startup code: it may ask whether it runs in a worker.
    return {
        "__name__": "__main__",
        "__builtins__": builtins,
        "is_re_worker_active": lambda: True,
        "is_ipython_mode": lambda: False,
        "get_ipython": lambda: None,
    }


def kernel_namespace(ns: dict[str, Any]) -> dict[str, Any]:
    """A namespace for kernel mode: the kernel's own `get_ipython` stays (ADR 20)."""
    ns.update(
        __name__="__main__",
        is_re_worker_active=lambda: True,
        is_ipython_mode=lambda: True,
    )
    return ns


def _exec_file(path: Path, ns: dict[str, Any]) -> None:
    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    ns["__file__"] = str(path)
    try:
        exec(code, ns)
    finally:
        ns.pop("__file__", None)


def startup_files(startup_dir: Path) -> list[Path]:
    """The `*.py` files of a startup directory, in the order they run."""
    return sorted(p for p in startup_dir.glob("*.py") if p.name != "__init__.py")


def load_startup(config: StartupConfig, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the startup code and return its namespace; its own exceptions propagate.

    `into`: the namespace to run it in (the kernel's, in kernel mode); a module's names are
    copied into it.
    """
    if config.startup_module:
        module = importlib.import_module(config.startup_module).__dict__
        if into is None:
            return module
        into.update({k: v for k, v in module.items() if not k.startswith("__")})
        return into
    ns = _fresh_namespace() if into is None else into
    if config.startup_script:
        script = Path(config.startup_script)
        if not script.is_file():
            raise StartupError(f"Startup script {str(script)!r} does not exist")
        _exec_file(script, ns)
        return ns
    if not config.startup_dir:
        raise StartupError("No startup code: give a startup directory, module or script")
    startup_dir = Path(config.startup_dir)
    if not startup_dir.is_dir():
        raise StartupError(f"Startup directory {str(startup_dir)!r} does not exist")
    # Files of a profile may import helper modules that sit next to them.
    if str(startup_dir) not in sys.path:
        sys.path.insert(0, str(startup_dir))
    for path in startup_files(startup_dir):
        _exec_file(path, ns)
    return ns


def find_run_engine(ns: dict[str, Any]) -> Any:
    re_obj = ns.get("RE")
    if re_obj is None:
        raise StartupError("Startup code did not create a RunEngine named RE")
    return re_obj
