"""`python -m services.stack.tiled_serve CONFIG --host H --port P`: `tiled serve config`, on
uvicorn without its 10 Hz poll (ADR 28).

The app is built from the config file as Tiled's own command builds it
(`tiled.config.parse_configs`, `tiled.server.app.build_app_from_config`), with Tiled's
logging configuration; only the server loop differs, and the settings are settled once
(`settle_settings`, ADR 10).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import uvicorn

from services.runtime.quiet_uvicorn import QuietServer


class _SettledOverrides(dict):  # type: ignore[type-arg]
    """FastAPI's dependency overrides, read as "none" by FastAPI's per-request check."""

    def __bool__(self) -> bool:
        return False


def settle_settings(app: Any) -> None:
    """Apply Tiled's settings override once, instead of at every request.

    Tiled overrides one dependency, `get_settings` (its configured `Settings`). While an
    app has any override, FastAPI derives every dependency of every request anew
    (`get_dependant` for each), a quarter of the CPU of a Tiled request. The override
    sets the config's values on the one `Settings` that the cached `get_settings` returns,
    and returns it: called once, `get_settings` returns the configured settings from then
    on. The overrides stay readable (Tiled's start-up and shutdown look the override up)
    but count as none.
    """
    from tiled.server.settings import get_settings

    override = app.dependency_overrides.get(get_settings)
    if override is None or len(app.dependency_overrides) != 1:
        return  # not the one override this was written for: leave FastAPI to it
    if override() is not get_settings():
        return  # not applied to the cached settings: the override must stay per request
    app.dependency_overrides = _SettledOverrides(app.dependency_overrides)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)

    from tiled.config import parse_configs
    from tiled.server.app import build_app_from_config
    from tiled.server.logging_config import LOGGING_CONFIG

    app = build_app_from_config(parse_configs(args.config))
    settle_settings(app)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=LOGGING_CONFIG)
    QuietServer(config).run()


if __name__ == "__main__":
    main()
