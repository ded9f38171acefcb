"""`StreamCloseSkipped`: Tiled's stream-close calls answered here, every other request sent on."""

from __future__ import annotations

import httpx

from services.history.tiled_streams import StreamCloseSkipped
from tests.conftest import packages_loaded


def test_stream_close_calls_are_answered_without_reaching_the_server() -> None:
    sent: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url.path}")
        return httpx.Response(201, json={"sent": True})

    skip = StreamCloseSkipped(httpx.MockTransport(server))
    with httpx.Client(base_url="http://tiled", transport=skip) as http:
        r = http.delete("/api/v1/stream/close/raw/abc/primary")
        assert r.status_code == 200 and r.json() is None
        # Everything else goes to the server, deletes of nodes included.
        assert http.delete("/api/v1/metadata/raw/abc").status_code == 201
        assert http.get("/api/v1/stream/close/raw/abc").status_code == 201
        assert http.post("/api/v1/metadata/raw", json={}).status_code == 201
    assert sent == [
        "DELETE /api/v1/metadata/raw/abc",
        "GET /api/v1/stream/close/raw/abc",
        "POST /api/v1/metadata/raw",
    ]
    assert skip.skipped == 1


def test_the_history_service_loads_neither_httpx_nor_tiled() -> None:
    # Only its catalog writer (a child process, ADR 32) needs them.
    assert packages_loaded("services.history.__main__", ("httpx", "tiled")) == []
