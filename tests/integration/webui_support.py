"""The web page in Debian's Chromium, driven by Playwright (tests, benchmark, screenshots)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Debian's package (apt `chromium`): Playwright's own browser builds are not downloaded.
CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str | None:
    for p in CHROMIUM_PATHS:
        if Path(p).is_file():
            return p
    found = shutil.which("chromium")
    return found


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium; `--no-sandbox` as CI runs as root."""
    from playwright.async_api import async_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("no chromium: apt-get install chromium (make test installs it)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=path,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield b
        finally:
            await b.close()


def key_script(key: str) -> str:
    """An init script that stores `key` as the page's credentials before it loads."""
    auth = json.dumps(json.dumps({"kind": "key", "key": key}))
    return f"localStorage.setItem('qserverAuth', {auth});"
