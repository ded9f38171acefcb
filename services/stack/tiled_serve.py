"""`python -m services.stack.tiled_serve CONFIG --host H --port P`: `tiled serve config`, on
uvicorn without its 10 Hz poll (ADR 28).

The app is built from the config file as Tiled's own command builds it
(`tiled.config.parse_configs`, `tiled.server.app.build_app_from_config`), with Tiled's
logging configuration; only the server loop differs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from services.runtime.quiet_uvicorn import QuietServer


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
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=LOGGING_CONFIG)
    QuietServer(config).run()


if __name__ == "__main__":
    main()
