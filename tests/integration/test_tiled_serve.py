"""The stack's Tiled launcher settles Tiled's settings override once (ADR 10, amendment).

The real Tiled app of the stack's catalog config, in this process (its lifespan run, and
httpx's ASGI transport: calls, no socket). While an app has a dependency override, FastAPI
derives every dependency of every request anew; the launcher's app must not, and must
still answer with the configured settings (the single-user API key of the config).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.stack.tiled_serve import settle_settings
from services.stack.tiled_server import TiledServer


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Each call of FastAPI's `get_dependant` made while answering a request."""
    import fastapi.dependencies.utils as deps

    calls: list[Any] = []
    real = deps.get_dependant

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("call"))
        return real(*args, **kwargs)

    monkeypatch.setattr(deps, "get_dependant", counting)
    yield calls


def tiled_app(tmp_path: Path) -> tuple[Any, str]:
    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config

    server = TiledServer(tmp_path)
    return build_app_from_config(parse_configs(server._write_config())), server.api_key


async def answers(app: Any, key: str, derivations: list[Any]) -> tuple[int, int]:
    """(status with the API key, status without it) of a metadata request; `derivations`
    holds those of these two requests only (the first request builds the routes)."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://tiled") as client,
    ):
        headers = {"Authorization": f"Apikey {key}"}
        assert (await client.get("/api/v1/metadata/", headers=headers)).status_code == 200
        derivations.clear()
        with_key = await client.get("/api/v1/metadata/", headers=headers)
        without = await client.get("/api/v1/metadata/")
    return with_key.status_code, without.status_code


async def test_requests_are_answered_without_deriving_dependencies_again(
    tmp_path: Path, derivations: list[Any]
) -> None:
    app, key = tiled_app(tmp_path / "settled")
    settle_settings(app)
    assert not app.dependency_overrides  # FastAPI sees no override
    # The config's key lets in, and nothing else does.
    assert await answers(app, key, derivations) == (200, 401)
    assert derivations == []


async def test_without_settling_every_request_derives_its_dependencies(
    tmp_path: Path, derivations: list[Any]
) -> None:
    """What the launcher avoids (FastAPI 0.165, Tiled 0.2.20): if this stops happening
    upstream, `settle_settings` is no longer needed."""
    app, key = tiled_app(tmp_path / "plain")
    assert await answers(app, key, derivations) == (200, 401)
    assert len(derivations) > 2
