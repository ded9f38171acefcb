"""The web page at `/ui`: a single-page application built with npm from `webui/` (ADR 26).

The built files ship inside the package (`services/gateway/webui/`), so the gateway serves
them without Node, a CDN or the network; all data comes from the public `/api` routes and
WebSockets. A fixed set of files, looked up by name: no path from a client reaches the disk.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.handlers import BaseRouteHandler
from litestar.response import File

from qserver.errors import NotFound

BUILD_DIR = Path(__file__).parent / "webui"
MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def ui_handlers() -> list[BaseRouteHandler]:
    index = BUILD_DIR / "index.html"
    assets_dir = BUILD_DIR / "assets"
    assets = {p.name: p for p in assets_dir.iterdir() if p.is_file()} if assets_dir.is_dir() else {}

    @get(["/ui", "/ui/"], status_code=200, include_in_schema=False)
    async def ui() -> Response[bytes]:
        if not index.is_file():
            raise NotFound("The web page is not built: run `npm ci && npm run build` in webui/")
        # Read each time: a rebuilt page is served without a restart (it is 1 KiB).
        headers = {"Cache-Control": "no-cache"}
        return Response(index.read_bytes(), media_type="text/html", headers=headers)

    @get("/ui/assets/{name:str}", status_code=200, include_in_schema=False)
    async def ui_asset(name: str) -> File:
        if name not in assets:
            raise NotFound(f"No such file in the web page's assets: {name[:100]!r}")
        path = assets[name]
        # Fixed names (no content hash): the browser revalidates, a 304 costs nothing.
        return File(
            path,
            media_type=MEDIA.get(path.suffix),
            content_disposition_type="inline",
            headers={"Cache-Control": "no-cache"},
        )

    return [ui, ui_asset]
