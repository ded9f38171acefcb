"""Runs into a Tiled catalog (the storage behind Databroker 2), through its HTTP API.

Blocking calls: the archiver runs them on one worker thread. The runs live in a container
with the `CatalogOfBlueskyRuns` spec (version 3, the SQL-backed layout), created when
missing, so `from_uri(url, api_key=...)[path]` is a catalog the standard clients read by
uid, partial uid and scan_id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from services.history.runs import Stored
from services.stack.tiled_server import DEFAULT_CATALOG

logger = logging.getLogger(__name__)

# Events are buffered and written in batches of this many (and at the stop document).
BATCH_SIZE = 100


@dataclass(frozen=True)
class TiledSettings:
    url: str
    api_key: str | None = None
    catalog: str = DEFAULT_CATALOG
    # Tell the server when the writes of a run's nodes end (Tiled's live streams). Off only
    # for a server known to have no streaming cache (the embedded stack's), which does
    # nothing with the calls but look the node up.
    close_streams: bool = True

    @property
    def catalog_url(self) -> str:
        return f"{self.url.rstrip('/')}/api/v1/metadata/{self.catalog}"


class TiledCatalog:
    """The catalog container and the TiledWriter that writes every run into it.

    One writer for all runs (its router keeps each run apart): a writer made per run cost
    the Tiled server one request more per run (the writer fetches the container with its
    data sources when it is made), a tenth of what saving a short run costs it.
    """

    def __init__(self, settings: TiledSettings) -> None:
        self.settings = settings
        self._catalog: Any = None
        self._writer: Any = None
        self._open: set[str] = set()  # the runs being written

    def connect(self) -> None:
        """Connect (raises while the server is unreachable) and make the container."""
        from tiled.client import from_uri
        from tiled.structures.core import Spec

        root = from_uri(self.settings.url, api_key=self.settings.api_key)
        if not self.settings.close_streams:
            from services.history.tiled_streams import StreamCloseSkipped

            http = root.context.http_client
            # httpx takes a transport only when the client is made, and Tiled makes it.
            http._transport = StreamCloseSkipped(http._transport)
        name = self.settings.catalog
        if name not in root:
            root.create_container(name, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
            logger.info("created the run catalog %r at %s", name, self.settings.url)
        self._catalog = root[name]
        self.forget()

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            raise RuntimeError("not connected to the Tiled server")
        return self._catalog

    def _node(self, uid: str) -> Any | None:
        from tiled.client.container import Container

        try:
            # Container's own lookup: the catalog's would fall back to a partial-uid search.
            return Container.__getitem__(self.catalog, uid)
        except KeyError:
            return None

    def stored(self, uid: str) -> Stored:
        node = self._node(uid)
        if node is None:
            return Stored.ABSENT
        return Stored.COMPLETE if node.metadata.get("stop") else Stored.PARTIAL

    def start(self, uid: str, doc: dict[str, Any], stored: Stored) -> None:
        """Begin writing a run; a partial copy left by an interrupted write is replaced."""
        from bluesky_tiled_plugins import TiledWriter

        if stored is Stored.PARTIAL:
            logger.warning("run %s was saved only in part: writing it again", uid)
            self.catalog.delete_contents([uid], recursive=True, external_only=False)
        if self._writer is None:
            self._writer = TiledWriter(self.catalog, batch_size=BATCH_SIZE)
        self._open.add(uid)
        self._writer("start", doc)

    def write(self, run_uid: str, name: str, doc: dict[str, Any]) -> None:
        if run_uid not in self._open:
            raise KeyError(f"run {run_uid} is not being written")
        self._writer(name, doc)
        if name == "stop":
            self._open.discard(run_uid)

    def drop(self, uid: str) -> None:
        """Stop writing one run (it will get no more documents).

        The writer's router keeps what it knew of the run (a few small dicts) until the
        writer is made again: at the next `forget`, or now if no other run is open.
        """
        self._open.discard(uid)
        if not self._open:
            self._writer = None

    def forget(self) -> None:
        """Drop the runs being written (they will be read again from their start)."""
        self._writer = None
        self._open.clear()

    def start_metadata(self, uid: str) -> dict[str, Any] | None:
        """The start document of a saved run (full or partial uid), or None."""
        try:
            node = self.catalog[uid]
        except (KeyError, ValueError):
            return None
        start = node.metadata.get("start")
        return dict(start) if start else None

    def run_summary(self, uid: str) -> dict[str, Any]:
        """Where a run is and whether it is complete, for the history service's link queries."""
        node = self._node(uid)
        return {
            "run_uid": uid,
            "saved": bool(node is not None and node.metadata.get("stop")),
            "url": f"{self.settings.catalog_url}/{uid}",
        }
