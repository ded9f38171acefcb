// The console: the recent backlog first (the gateway's `?backlog=N`), then live; search,
// autoscroll while at the bottom.
import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { can, useApp } from "../state";
import { openStream, type StreamState } from "../stream";
import type { ConsoleMsg } from "../types";

const BACKLOG = 1000;
const KEEP = 5000; // lines

export function Console() {
  const ctx = useApp();
  const [lines, setLines] = useState<string[]>([]);
  const [state, setState] = useState<StreamState>("connecting");
  const [search, setSearch] = useState("");
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLPreElement>(null);
  const allowed = can(ctx, "read:console");

  useEffect(() => {
    if (!allowed) return;
    let text: string[] = [];
    let partial = "";
    let pending = false;
    const s = openStream(
      () => ctx.api.wsUrl("/api/console_output/ws", { backlog: String(BACKLOG) }),
      (data) => {
        const m = data as ConsoleMsg;
        if (typeof m.msg !== "string") return;
        const parts = (partial + m.msg).split("\n");
        partial = parts.pop() ?? "";
        // A carriage return redraws its line (progress bars): keep what comes after it.
        text = [...text, ...parts.map((l) => l.slice(l.lastIndexOf("\r") + 1))].slice(-KEEP);
        if (!pending) {
          pending = true;
          requestAnimationFrame(() => {
            pending = false;
            setLines(partial ? [...text, partial.slice(partial.lastIndexOf("\r") + 1)] : text);
          });
        }
      },
      (st) => {
        setState(st);
        if (st === "connecting") {
          // The backlog comes again with the new connection.
          text = [];
          partial = "";
        }
      },
    );
    return () => s.close();
  }, [ctx.api, allowed]);

  useLayoutEffect(() => {
    if (follow && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [lines, follow, search]);

  const needle = search.toLowerCase();
  const shown = needle ? lines.filter((l) => l.toLowerCase().includes(needle)) : lines;
  return (
    <section id="console" class="panel" aria-label="Console">
      <h2>Console</h2>
      <div class="row">
        <label>
          Search <input type="search" value={search} onInput={(e) => setSearch(e.currentTarget.value)} />
        </label>
        <label>
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.currentTarget.checked)} /> Autoscroll
        </label>
        <small>
          {needle ? `${shown.length} of ${lines.length} lines` : `${lines.length} lines`}
          {state !== "open" && allowed ? ` · ${state}` : ""}
          {!allowed ? " · not allowed to read the console" : ""}
        </small>
      </div>
      <pre
        ref={box}
        class="console"
        tabIndex={0}
        aria-label="Console output"
        data-testid="console"
        onScroll={(e) => {
          const el = e.currentTarget;
          const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
          if (atBottom !== follow) setFollow(atBottom);
        }}
      >
        {shown.join("\n")}
      </pre>
    </section>
  );
}
