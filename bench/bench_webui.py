"""Web page benchmark in Debian's Chromium (ADR 26); prints JSON.

Run: `.venv/bin/python -m bench.bench_webui` (starts its own nats-server, services and
gateway; needs `apt-get install chromium`). Measures:
- `change_shown_ms`: a queue change made over NATS (an item added at the front by another
  client) until the page shows it (a MutationObserver in the page stamps the moment the new
  row is in the DOM; the clocks are the same machine's): p50/p95 (goal < 100 ms).
- `first_render_ms`: page load (navigation start) until the status, the queue rows and the
  plan form are all rendered: p50/p95 over fresh pages (goal < 1 s).
- `scroll_10000`: a 10,000-item queue scrolled from top to bottom, a page per frame: frame
  times p50/p95/max and frames over 50 ms (a visible stall), plus its first render; and the
  same page's frames without scrolling (`idle_page_*`), what a loaded machine alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import stack
from qserver.client import Client
from services.runtime.procs import ServiceProcess
from services.stack.natsserver import free_port
from tests.integration.webui_support import browser

USER = {"user": "bench", "user_group": "primary"}
ITEM = {"item_type": "plan", "name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 1}}
GOALS = {"change_shown_p50_ms": 100, "first_render_p50_ms": 1000}

# True once the page shows the status, queue rows (if any) and the plan form's choices.
RENDERED = """(want) => {
  const state = document.querySelector('[data-testid="manager-state"]');
  const grid = document.querySelector('[data-testid="queue-list"]');
  const rows = grid && grid.getAttribute('aria-rowcount') === String(want)
    && (want === 0 || document.querySelector('[data-index="0"]'));
  const plans = document.querySelectorAll('#editor select option').length > 0;
  return state && rows && plans ? performance.now() : null;
}"""

WATCH = """() => {
  window.__shown = null;
  new MutationObserver(() => {
    const first = document.querySelector('[data-index="0"]');
    if (window.__want && !window.__shown && first && first.textContent.includes(window.__want))
      window.__shown = performance.timeOrigin + performance.now();
  }).observe(document.querySelector('[data-testid="queue-list"]'),
             {subtree: true, childList: true, characterData: true});
}"""

SCROLL = """async () => {
  const el = document.querySelector('[data-testid="queue-list"]');
  // The same number of frames without scrolling first: what the machine alone costs.
  const idle = [];
  let last = await new Promise(requestAnimationFrame);
  for (let i = 0; i < 300; i++) {
    const t = await new Promise(requestAnimationFrame);
    idle.push(t - last);
    last = t;
  }
  const frames = [];
  const step = el.clientHeight;
  while (el.scrollTop + el.clientHeight < el.scrollHeight - 1) {
    el.scrollTop += step;
    const t = await new Promise(requestAnimationFrame);
    frames.push(t - last);
    last = t;
  }
  const n = Number(el.getAttribute('aria-rowcount'));
  const lastRow = el.querySelector('[data-index="' + (n - 1) + '"]');
  return {frames, idle, reached_end: !!lastRow};
}"""


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(len(s) * q))], 1)


@contextlib.asynccontextmanager
async def own_stack() -> AsyncIterator[tuple[Client, str]]:
    """nats-server, the core services and one gateway (--no-auth on loopback)."""
    async with stack() as (nats, prefix):
        with tempfile.TemporaryDirectory(prefix="qs-bench-webui-") as tmp:
            port = free_port()
            gw = ServiceProcess(
                "gateway", nats.url, prefix, Path(tmp) / "gateway.log", "--port", str(port),
                "--no-auth", "--log-level", "WARNING",
            ).start()  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            client = await Client.connect(nats.url, prefix, timeout=30.0)
            try:
                async with httpx.AsyncClient() as h:
                    for _ in range(600):
                        with contextlib.suppress(httpx.TransportError):
                            await h.get(f"{url}/docs")
                            break
                        await asyncio.sleep(0.05)
                yield client, url
            finally:
                await client.close()
                gw.stop()


async def fill(client: Client, n: int) -> None:
    for start in range(0, n, 500):
        items = [ITEM] * min(500, n - start)
        reply = await client.request("queue_item_add_batch", {"items": items, **USER})
        assert reply["success"], reply["msg"]


async def first_render(b: Any, url: str, want: int, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        ctx = await b.new_context(viewport={"width": 1400, "height": 1000})
        page = await ctx.new_page()
        await page.goto(f"{url}/ui")
        handle = await page.wait_for_function(RENDERED, arg=want, polling="raf", timeout=60_000)
        out.append(float(await handle.json_value()))
        await ctx.close()
    return out


async def change_shown(b: Any, client: Client, url: str, runs: int) -> list[float]:
    ctx = await b.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    await page.goto(f"{url}/ui")
    await page.wait_for_function(RENDERED, arg=0, polling="raf", timeout=60_000)
    await page.evaluate(WATCH)
    out = []
    for i in range(runs):
        tag = f"bench{i:04d}x"
        item = {**ITEM, "kwargs": {"num": 1, "md": {"tag": tag}}}
        await page.evaluate("(t) => { window.__want = t; window.__shown = null; }", tag)
        t0 = time.time() * 1000
        reply = await client.request("queue_item_add", {"item": item, "pos": "front", **USER})
        assert reply["success"], reply["msg"]
        shown = await page.wait_for_function("() => window.__shown", timeout=60_000)
        out.append(float(await shown.json_value()) - t0)
        await asyncio.sleep(0.05)
    await ctx.close()
    await client.request("queue_clear")
    return out


async def scroll(b: Any, client: Client, url: str) -> dict[str, Any]:
    await fill(client, 10_000)
    render = await first_render(b, url, 10_000, 3)
    ctx = await b.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    await page.goto(f"{url}/ui")
    await page.wait_for_function(RENDERED, arg=10_000, polling="raf", timeout=60_000)
    got = await page.evaluate(SCROLL)
    await ctx.close()
    frames = got["frames"]
    return {
        "items": 10_000,
        "first_render_p50_ms": pct(render, 0.5),
        "frames": len(frames),
        "frame_p50_ms": pct(frames, 0.5),
        "frame_p95_ms": pct(frames, 0.95),
        "frame_max_ms": round(max(frames), 1),
        "frames_over_50_ms": sum(1 for f in frames if f > 50),
        "idle_page_frame_p95_ms": pct(got["idle"], 0.95),
        "idle_page_frames_over_50_ms_per_1000": round(
            1000 * sum(1 for f in got["idle"] if f > 50) / len(got["idle"]), 1
        ),
        "reached_end": got["reached_end"],
    }


async def main(args: argparse.Namespace) -> None:
    async with own_stack() as (client, url), browser() as b:
        await fill(client, 20)
        render = await first_render(b, url, 20, args.loads)
        await client.request("queue_clear")
        changes = await change_shown(b, client, url, args.changes)
        result = {
            "first_render_ms": {
                "p50": pct(render, 0.5),
                "p95": pct(render, 0.95),
                "n": len(render),
            },
            "change_shown_ms": {
                "p50": pct(changes, 0.5),
                "p95": pct(changes, 0.95),
                "n": len(changes),
            },
            "scroll_10000": await scroll(b, client, url),
            "goals": GOALS,
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loads", type=int, default=10, help="fresh page loads to time")
    p.add_argument("--changes", type=int, default=50, help="queue changes to time")
    asyncio.run(main(p.parse_args()))
