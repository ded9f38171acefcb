"""Gateways with bluesky-httpserver configurations, and both reference clients behind one face."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from bluesky_queueserver_api.http import REManagerAPI
from bluesky_queueserver_api.http.aio import REManagerAPI as AsyncREManagerAPI

# bluesky-queueserver-api's own test configuration (`test_api_fs.py`: the 'toy' provider).
TOY = {
    "authentication": {
        "providers": [
            {
                "provider": "toy",
                "authenticator": "bluesky_httpserver.authenticators:DictionaryAuthenticator",
                "args": {
                    "users_to_passwords": {
                        "bob": "bob_password",
                        "alice": "alice_password",
                        "tom": "tom_password",
                        "cara": "cara_password",
                    }
                },
            }
        ]
    },
    "api_access": {
        "policy": "bluesky_httpserver.authorization:DictionaryAPIAccessControl",
        "args": {
            "users": {
                "bob": {"roles": ["admin", "expert"]},
                "alice": {"roles": "advanced"},
                "tom": {"roles": "user"},
            }
        },
    },
}
LIBRARIES = ("THREADS", "ASYNC")


def write_config(directory: Path, config: dict[str, Any], name: str = "http.yml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path


def short_tokens(access_s: float) -> dict[str, Any]:
    """The toy configuration with short-lived access tokens (`test_session_refresh_3`)."""
    auth = {
        **TOY["authentication"],
        "access_token_max_age": access_s,
        "refresh_token_max_age": 600,
        "session_max_age": 1000,
    }
    return {**TOY, "authentication": auth}


class Blocking:
    """The asyncio client, called like the threaded one (on an event loop of its own)."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def make() -> Any:
            return AsyncREManagerAPI(**kwargs)

        self._rm = self._loop.run_until_complete(make())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._rm, name)
        if inspect.iscoroutinefunction(attr):

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._loop.run_until_complete(attr(*args, **kwargs))

            return call
        return attr

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._rm.close())
            # The client's status tasks outlive close(): end them on their own loop.
            pending = asyncio.all_tasks(self._loop)

            async def drain() -> None:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

            self._loop.run_until_complete(drain())
        finally:
            self._loop.close()


def client(library: str, url: str, **kwargs: Any) -> Any:
    """`REManagerAPI` over HTTP: the threaded one, or the asyncio one behind `Blocking`."""
    if library == "THREADS":
        return REManagerAPI(http_server_uri=url, **kwargs)
    return Blocking(http_server_uri=url, **kwargs)


def with_client(library: str, url: str, test: Callable[[Any], None], **kwargs: Any) -> None:
    RM = client(library, url, http_auth_provider="/toy/token", **kwargs)
    try:
        test(RM)
    finally:
        RM.close()
