"""The environment process: `python -m services.worker.env --nats-url URL --prefix P
--env-uid UID --worker-id ID (--startup-dir DIR | --startup-module MOD | --startup-script FILE)
[--ipython-kernel-dir DIR]`.

With `--ipython-kernel-dir` the namespace lives in an IPython kernel (kernel mode, ADR 20),
whose connection file is written there.

Exit codes: 0 after `close` (or after closing itself with no worker service to supervise
it), 1 if NATS cannot be reached, 2 if the startup code failed, 3 if it gave up a plan it
could not report (no worker service and no NATS: see `supervision.py`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from pathlib import Path

from qserver.protocol.subjects import DEFAULT_PREFIX, Subjects
from qserver.protocol.worker import StartupConfig
from services.runtime import doc_stream
from services.runtime.service_base import setup_logging
from services.worker.env.commands import EnvCommands
from services.worker.env.console import capture_console
from services.worker.env.engine import Environment
from services.worker.env.journal import DocumentJournal
from services.worker.env.link import NatsLink
from services.worker.env.supervision import Supervision
from services.worker.messages import ORPHAN_TIMEOUT_S

logger = logging.getLogger("services.worker.env")
# How long closing waits for documents not yet stored while the stream acknowledges nothing.
CLOSE_WAIT_S = 3.0


def main(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    if logging.getLogger().level > logging.DEBUG:
        # bluesky logs every RunEngine state change at INFO: too much for the console.
        logging.getLogger("bluesky").setLevel(logging.WARNING)
    startup = StartupConfig(
        startup_dir=args.startup_dir,
        startup_module=args.startup_module,
        startup_script=args.startup_script,
    )
    link = NatsLink(args.nats_url, name=f"qserver-env-{args.env_uid[:8]}")
    try:
        link.start()
    except Exception as e:
        logger.error("cannot connect to NATS at %s: %r", args.nats_url, e)
        return 1
    subjects = Subjects(args.prefix)
    journal = DocumentJournal(link, subjects, args.env_uid) if doc_stream.enabled() else None
    kernel_dir = Path(args.ipython_kernel_dir) if args.ipython_kernel_dir else None
    if kernel_dir is not None:
        # pydevd (ipykernel's debugger) warns about frozen modules on every start.
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    env = Environment(
        subjects, args.env_uid, link, startup, args.device_max_depth, journal, kernel_dir
    )
    commands = EnvCommands(env)
    capture_console(commands.sink)
    env.console = commands.sink
    env.flush_console = functools.partial(commands.console.send, link.nc)
    link.call(commands.start(), timeout=10.0)
    supervision = Supervision(env, args.worker_id, args.orphan_timeout)
    link.call(supervision.start(), timeout=10.0)
    if journal is not None:
        link.call(journal.start(), timeout=10.0)
    code = 2
    if env.open():
        logger.debug("environment %s is ready (pid %d)", args.env_uid, os.getpid())
        env.serve()
        env.closed()
        code = 0
    if journal is not None:
        try:
            left = link.call(journal.wait_stored(CLOSE_WAIT_S), timeout=CLOSE_WAIT_S + 10.0)
        except Exception:
            left = journal.pending
        journal.close_report(left)
    try:
        link.call(commands.flush(), timeout=5.0)
    except Exception as e:
        logger.warning("last events not published: %r", e)
    link.close()
    return code


def cli() -> None:
    p = argparse.ArgumentParser(prog="python -m services.worker.env", description=__doc__)
    p.add_argument("--nats-url", required=True)
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--env-uid", required=True)
    p.add_argument("--worker-id", default="", help="the worker service instance that starts it")
    p.add_argument(
        "--orphan-timeout",
        type=float,
        default=float(os.environ.get("QSERVER_ENV_ORPHAN_TIMEOUT") or ORPHAN_TIMEOUT_S),
        help="seconds it stays idle with no worker service before it closes itself",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--startup-dir")
    where.add_argument("--startup-module")
    where.add_argument("--startup-script")
    p.add_argument("--device-max-depth", type=int, default=5)
    p.add_argument(
        "--ipython-kernel-dir",
        default=None,
        help="run the namespace in an IPython kernel; its connection file goes here",
    )
    p.add_argument("--log-level", default=os.environ.get("QSERVER_LOG_LEVEL", "INFO"))
    raise SystemExit(main(p.parse_args()))


if __name__ == "__main__":
    cli()
