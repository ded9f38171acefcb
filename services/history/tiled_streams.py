"""Tiled's stream-close calls answered on the writer's side (ADR 10, amendment).

A module of its own so that only the catalog writer imports httpx: the history service
imports `tiled_catalog` for its settings, and stays small (ADR 32).
"""

from __future__ import annotations

import httpx


class StreamCloseSkipped(httpx.BaseTransport):
    """A transport that answers Tiled's stream-close calls itself and sends the rest on.

    TiledWriter ends every run by telling the server, node by node, that its writes ended
    (`DELETE /api/v1/stream/close/<path>`: the run, each stream and its table), so that
    subscribers to the server's live streams hear it. A server without a streaming cache
    does nothing with them but authenticate and look the node up: 3 of the 8 requests that
    saving a short run takes, about a quarter of the server's CPU for it (docs/benchmarks.md).
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.skipped = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE" and "/api/v1/stream/close/" in request.url.path:
            self.skipped += 1
            # What the server answers: `null`, as JSON.
            return httpx.Response(
                200, content=b"null", headers={"content-type": "application/json"}, request=request
            )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
