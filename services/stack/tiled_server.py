"""Start and stop a Tiled server that serves the embedded run catalog (SQLite, files).

Everything lives under one directory: `catalog.db` (the catalog), `tables.db` (event data
tables), `data/` (arrays), `config.yml` (written here, mode 0600 since it holds the API
key) and `api_key`. The key is generated once and kept, so clients keep working across
restarts. Documents of runs are served as `application/json-seq`, which `run.documents()`
of bluesky-tiled-plugins' client asks for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from services.runtime.procs import ChildServer, http_status
from services.stack.natsserver import free_port

DEFAULT_CATALOG = "raw"  # the container of runs, with the CatalogOfBlueskyRuns spec


def load_or_make_key(path: Path) -> str:
    """The key stored at `path`, or a new random one written there (readable by the owner)."""
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = os.urandom(24).hex()  # not `secrets`: it maps OpenSSL (ADR 34)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


class TiledServer(ChildServer):
    def __init__(
        self,
        directory: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        death_signal: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.host = host
        self.port = port or free_port()
        self.death_signal = death_signal
        self.log_file = log_file or self.directory / "tiled.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_key = load_or_make_key(self.directory / "api_key")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def config(self) -> dict[str, object]:
        d = self.directory.resolve()
        return {
            "authentication": {"single_user_api_key": self.api_key},
            "trees": [
                {
                    "path": "/",
                    "tree": "catalog",
                    "args": {
                        "uri": f"sqlite:///{d / 'catalog.db'}",
                        "writable_storage": [
                            f"file://localhost{d / 'data'}",
                            f"sqlite:///{d / 'tables.db'}",
                        ],
                        "init_if_not_exists": True,
                    },
                }
            ],
            "media_types": {
                "BlueskyRun": {
                    "application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"
                }
            },
        }

    def _write_config(self) -> Path:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        path = self.directory / "config.yml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            # JSON is YAML: Tiled reads it as its YAML config, and the supervisor, which stays
            # resident, does without a YAML library (ADR 33).
            json.dump(self.config(), f, indent=2)
        return path

    def launch(self) -> TiledServer:
        """Start the process without waiting (it takes a few seconds to answer)."""
        config = self._write_config()
        # `tiled serve config`, on a uvicorn loop that does not wake 10 times a second (ADR 28).
        cmd = [sys.executable, "-m", "services.stack.tiled_serve", str(config)]
        cmd += ["--host", self.host, "--port", str(self.port)]
        self._spawn(cmd)
        return self

    def answers(self) -> bool:
        status = http_status(f"{self.url}/healthz", timeout=1.0)
        return status is not None and status < 400

    def wait_ready(self, timeout: float = 60.0) -> TiledServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"tiled exited at start:\n{self.log_tail()}")
            if self.answers():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"tiled not ready after {timeout:g} s:\n{self.log_tail()}")

    def start(self, timeout: float = 60.0) -> TiledServer:
        return self.launch().wait_ready(timeout)


__all__ = ["DEFAULT_CATALOG", "TiledServer", "load_or_make_key"]
