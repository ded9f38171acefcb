"""The catalog writer: runs from the document stream into the Tiled catalog, in a process of
its own (ADR 32).

The history service starts it when it saves runs to a catalog (`--tiled-url`), starts it
again when it exits, and stops it when it stops; the kernel kills it if the history service
dies without stopping it. It runs the `Archiver` (ADR 10) with the history service's NATS
user and settings, and announces each saved run on `<prefix>.events.run_saved`.

Why a process: writing runs needs Tiled's writer, whose imports (dask, xarray, pandas,
pyarrow, numba) take ~200 MiB and whose writes take ~1 s of CPU per run. In a process of
its own they neither weigh on the history service's memory nor hold its event loop (and
the GIL) while it answers `history_get`, and a crash in them costs only this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

import msgspec
import nats

from qserver.config import env_flag
from qserver.connect import NatsAuth, connect_options, servers
from qserver.protocol.subjects import Subjects
from services.history.archiver import Archiver, SavedRun
from services.history.tiled_catalog import DEFAULT_CATALOG, TiledCatalog, TiledSettings
from services.runtime.console import ServiceConsole
from services.runtime.doc_stream import Reconnects
from services.runtime.procs import die_with_parent_hook
from services.runtime.replies import reply_to_inboxes_only
from services.runtime.service_base import (
    run_loop,
    service_arguments,
    setup_logging,
    shutdown,
    wait_for_signal,
)
from services.runtime.waiting import wait_for_nats

logger = logging.getLogger("services.history.catalog_writer")

MODULE = "services.history.catalog_writer"
PROCESS_NAME = b"catalog-writer"  # what `ps -o comm`, top and psutil show (at most 15 bytes)
RESTART_S = 1.0
RESTART_MAX_S = 30.0
STEADY_S = 60.0  # a writer that ran this long before it exited starts again at once
STOP_S = 10.0


# ----- in the history service -----


def writer_argv(args: argparse.Namespace) -> list[str]:
    """The command line of the writer for the history service's parsed `args`."""
    return [
        sys.executable,
        "-m",
        MODULE,
        "--nats-url",
        args.nats_url,
        "--prefix",
        args.prefix,
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,
        "--tiled-url",
        args.tiled_url,
        "--tiled-catalog",
        args.tiled_catalog,
    ]


def writer_env(args: argparse.Namespace, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The history service's environment, with its NATS credentials given as flags too."""
    env = dict(os.environ if base is None else base)
    env.update(NatsAuth.from_args(args, env).environ())
    return env


class WriterProcess:
    """The writer as a child of the history service: started, restarted, stopped."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        # From the event loop's thread, the main one: the kernel's parent-death signal follows
        # the thread that forked (see `die_with_parent_hook`). SIGKILL: a history service that
        # died is started again at once, and two writers must not write the same runs.
        return subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C goes to the history service only
            preexec_fn=die_with_parent_hook(signal.SIGKILL),
        )

    async def run(self) -> None:
        """Keep the writer running until cancelled (then stop it)."""
        delay = RESTART_S
        try:
            while True:
                started = time.monotonic()
                self.proc = self._spawn()
                self.starts += 1
                code = await asyncio.to_thread(self.proc.wait)
                if time.monotonic() - started > STEADY_S:
                    delay = RESTART_S
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"code {code}"
                logger.warning(
                    "the catalog writer ended (%s): starting it again in %g s", how, delay
                )
                await asyncio.sleep(delay)
                delay = min(2 * delay, RESTART_MAX_S)
        finally:
            await asyncio.shield(self.stop())

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, STOP_S)
        except subprocess.TimeoutExpired:
            logger.warning("the catalog writer did not stop within %g s: killed", STOP_S)
            proc.kill()
            await asyncio.to_thread(proc.wait)


# ----- the writer process -----


def name_this_process(name: bytes = PROCESS_NAME) -> None:
    """Set the name `ps`, top and psutil show (Linux; elsewhere nothing happens)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME


async def main(args: argparse.Namespace) -> int:
    subjects = Subjects(args.prefix)
    await wait_for_nats(args.nats_url)
    reconnects = Reconnects()
    nc = await nats.connect(
        servers(args.nats_url),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        reconnected_cb=reconnects.notify,
        name="qserver-catalog-writer",
        **connect_options(args),
    )
    reply_to_inboxes_only(nc)
    service_console = ServiceConsole(nc, subjects)  # its log records on the console (ADR 18)
    await service_console.start()

    async def announce(run: SavedRun) -> None:
        with contextlib.suppress(Exception):
            await nc.publish(subjects.run_saved_event, msgspec.json.encode(run))

    settings = TiledSettings(
        url=args.tiled_url,
        api_key=os.environ.get("QSERVER_TILED_API_KEY") or None,
        catalog=args.tiled_catalog,
        close_streams=env_flag("QSERVER_TILED_CLOSE_STREAMS"),
    )
    archiver = Archiver(
        nc, subjects, TiledCatalog(settings), on_saved=announce, reconnects=reconnects
    )
    archiving = asyncio.create_task(archiver.run())
    logger.info("catalog writer started (pid %d)", os.getpid())
    await wait_for_signal(asyncio.Event())
    archiving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await archiving
    archiver.close()
    await shutdown(service_console.stop(), nc.drain())
    logger.info("catalog writer stopped")
    return 0


def cli() -> None:
    p = service_arguments(f"python -m {MODULE}", __doc__)
    p.add_argument(
        "--tiled-url", required=True, help="the Tiled server, e.g. http://127.0.0.1:8000"
    )
    p.add_argument("--tiled-catalog", default=DEFAULT_CATALOG, help="the container of runs")
    args = p.parse_args()
    name_this_process()
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(run_loop(main(args)))


if __name__ == "__main__":
    cli()
