"""A NATS cluster with JetStream on this machine: N nats-server processes routed together.

For the failover drills and for trying a clustered set-up without containers: every node
listens on loopback, has its own store directory and config file, and can be killed and
restarted on the same ports and store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.runtime.procs import ChildServer
from services.stack.natsserver import find_binary, free_port

HOST = "127.0.0.1"


class ClusterNode(ChildServer):
    def __init__(
        self,
        name: str,
        directory: Path,
        *,
        cluster_name: str,
        death_signal: int | None = None,
        include: Path | None = None,
    ) -> None:
        self.name = name
        self.include = include  # more server config, e.g. accounts and users
        self.directory = Path(directory)
        self.cluster_name = cluster_name
        self.port = free_port()
        self.cluster_port = free_port()
        self.monitor_port = free_port()
        self.death_signal = death_signal
        self.log_file = self.directory / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.routes: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def config(self) -> str:
        routes = ", ".join(json.dumps(r) for r in self.routes)
        store = json.dumps(str(self.directory / "jetstream"))
        return (
            f"server_name: {self.name}\n"
            f"listen: {HOST}:{self.port}\n"
            f"http: {HOST}:{self.monitor_port}\n"
            f"jetstream {{ store_dir: {store}, max_memory_store: 64MB, "
            f"max_file_store: 1GB }}\n"
            f"cluster {{ name: {self.cluster_name}, listen: {HOST}:{self.cluster_port}, "
            f"routes: [{routes}] }}\n"
        ) + (f"include {json.dumps(self.include.name)}\n" if self.include else "")

    def start(self, timeout: float = 10.0) -> ClusterNode:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nats.conf"
        conf.write_text(self.config())
        if self.include is not None:
            # nats-server resolves an include relative to the including file, even "/...".
            shutil.copyfile(self.include, self.directory / self.include.name)
        self._spawn([find_binary(), "-c", str(conf)])
        self._wait_listening(timeout)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited:\n{self.log_tail()}")
            if self.healthy(js=False):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nats-server {self.name} not up after {timeout:g} s")

    def healthy(self, js: bool = True) -> bool:
        """The monitoring endpoint says ok (with `js`: JetStream is current too)."""
        path = "/healthz" if js else "/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.monitor_port}{path}", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False


class NatsCluster:
    """`size` nodes (n1, n2, ...) routed to each other, JetStream on each."""

    def __init__(
        self,
        directory: Path,
        size: int = 3,
        *,
        name: str = "qs",
        death_signal: int | None = None,
        include: Path | None = None,
    ) -> None:
        self.nodes = [
            ClusterNode(
                f"n{i + 1}",
                Path(directory) / f"n{i + 1}",
                cluster_name=name,
                death_signal=death_signal,
                include=include,
            )
            for i in range(size)
        ]
        for node in self.nodes:
            node.routes = [
                f"nats-route://{HOST}:{other.cluster_port}"
                for other in self.nodes
                if other is not node
            ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what clients are given, to fail over."""
        return ",".join(self.urls)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> float:
        """Wait until every running node reports JetStream healthy; the seconds it took."""
        t0 = time.monotonic()
        while not all(n.healthy() for n in self.nodes if n.running()):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the NATS cluster is not healthy after {timeout:g} s")
            time.sleep(0.1)
        return time.monotonic() - t0

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


__all__ = ["ClusterNode", "NatsCluster"]
