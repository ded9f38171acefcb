"""A one-page web UI served at `/ui`: watch the queue live and drive it (no external assets).

Status and console arrive on the gateway's WebSockets; the queue and history are fetched
again only when their uids in the status change. The key, if any, stays in the browser's
localStorage and goes out as `Authorization: ApiKey` (and `?api_key=` on WebSockets).
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>qserver</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1em; color: #222; }
  header { display: flex; gap: 1em; align-items: center; flex-wrap: wrap; }
  #state { font-weight: 600; }
  button { margin: 2px; }
  section { margin-top: 1em; }
  table { border-collapse: collapse; width: 100%; }
  td, th { border-bottom: 1px solid #ddd; padding: 2px 6px; text-align: left; }
  pre { background: #f6f6f6; height: 14em; overflow: auto; padding: .5em; }
  textarea { width: 100%; height: 3em; font-family: monospace; }
  #error { color: #b00; }
</style>
</head>
<body>
<header>
  <strong>qserver</strong>
  <span id="state">connecting...</span>
  <label>API key <input id="key" type="password" size="20"></label>
  <span id="error"></span>
</header>
<section>
  <button data-post="/api/environment/open">Open environment</button>
  <button data-post="/api/environment/close">Close environment</button>
  <button data-post="/api/queue/start">Start queue</button>
  <button data-post="/api/queue/stop">Stop after this plan</button>
  <button data-post="/api/re/pause" data-body='{"option": "immediate"}'>Pause</button>
  <button data-post="/api/re/resume">Resume</button>
  <button data-post="/api/re/stop">Stop plan</button>
  <button data-post="/api/re/abort">Abort</button>
  <button data-post="/api/re/halt">Halt</button>
  <button data-post="/api/queue/clear">Clear queue</button>
</section>
<section>
  <textarea id="plan">{"name": "count", "args": [["det1", "det2"]], "kwargs": {"num": 5}}</textarea>
  <button id="add">Add plan to the back</button>
</section>
<section><h3>Running</h3><div id="running">-</div></section>
<section><h3>Queue</h3><table id="queue"></table></section>
<section><h3>History (last 10)</h3><table id="history"></table></section>
<section><h3>Console</h3><pre id="console"></pre></section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const keyInput = $("key");
keyInput.value = localStorage.getItem("qserverKey") || "";
keyInput.onchange = () => { localStorage.setItem("qserverKey", keyInput.value); connect(); };

function headers() {
  const h = {"Content-Type": "application/json"};
  if (keyInput.value) h["Authorization"] = "ApiKey " + keyInput.value;
  return h;
}

async function call(method, path, body) {
  // Browsers send no body with GET: the gateway reads that as `{}`.
  const init = {method, headers: headers()};
  if (method !== "GET") init.body = JSON.stringify(body || {});
  const r = await fetch(path, init);
  const reply = await r.json();
  const problem = r.ok ? (reply.success === false ? reply.msg : "") : reply.detail;
  $("error").textContent = problem || "";
  return reply;
}

function describe(item) {
  const args = JSON.stringify(item.args || []);
  const kwargs = JSON.stringify(item.kwargs || {});
  return `${item.name} ${args} ${kwargs}`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

async function showQueue() {
  const q = await call("GET", "/api/queue/get").catch(() => null);
  if (!q || !q.items) return;
  $("running").textContent = q.running_item && q.running_item.name ? describe(q.running_item) : "-";
  const table = $("queue");
  table.replaceChildren(row(["#", "plan", "user", ""]));
  q.items.forEach((item, i) => {
    const remove = document.createElement("button");
    remove.textContent = "remove";
    remove.onclick = () => call("POST", "/api/queue/item/remove", {uid: item.item_uid});
    table.appendChild(row([String(i), describe(item), item.user, remove]));
  });
}

async function showHistory() {
  const h = await call("GET", "/api/history/get").catch(() => null);
  if (!h || !h.items) return;
  const table = $("history");
  table.replaceChildren(row(["plan", "exit status", "user"]));
  for (const item of h.items.slice(-10).reverse()) {
    table.appendChild(row([describe(item), item.result ? item.result.exit_status : "", item.user]));
  }
}

let sockets = [];
let seen = {};
function wsUrl(path, query = "") {
  const params = new URLSearchParams(query);
  if (keyInput.value) params.set("api_key", keyInput.value);
  const q = params.toString();
  return location.origin.replace(/^http/, "ws") + path + (q ? "?" + q : "");
}

// The console as a terminal shows it: progress bars redraw lines with "\r" and ESC[A.
let term = {lines: [""], row: 0, col: 0};
function feed(text) {
  const t = term;
  while (text) {
    const m = /\n|\r|\x1b\[A/.exec(text);
    const end = m ? m.index : text.length;
    if (end > 0) {
      const chunk = text.slice(0, end);
      const line = t.lines[t.row].padEnd(t.col);
      t.lines[t.row] = line.slice(0, t.col) + chunk + line.slice(t.col + chunk.length);
      t.col += chunk.length;
      text = text.slice(end);
    } else if (m[0] === "\n") {
      t.row += 1; t.col = 0;
      if (t.row === t.lines.length) t.lines.push("");
      text = text.slice(1);
    } else if (m[0] === "\r") {
      t.col = 0; text = text.slice(1);
    } else {
      t.row = Math.max(t.row - 1, 0); text = text.slice(m[0].length);
    }
  }
  const extra = t.lines.length - 1000;
  if (extra > 0) { t.lines.splice(0, extra); t.row = Math.max(t.row - extra, 0); }
}

function connect() {
  sockets.forEach((s) => s.close());
  seen = {};
  const status = new WebSocket(wsUrl("/api/status/ws"));
  status.onmessage = (ev) => {
    const st = JSON.parse(ev.data).msg.status;
    $("state").textContent = `${st.manager_state} | RE ${st.re_state || "-"} | ` +
      `environment ${st.worker_environment_exists ? "open" : "closed"} | ` +
      `${st.items_in_queue} queued | ${st.items_in_history} in history`;
    if (st.plan_queue_uid !== seen.queue || st.running_item_uid !== seen.running) {
      seen.queue = st.plan_queue_uid; seen.running = st.running_item_uid; showQueue();
    }
    if (st.plan_history_uid !== seen.history) { seen.history = st.plan_history_uid; showHistory(); }
  };
  status.onclose = (ev) => { $("state").textContent = `disconnected (${ev.code} ${ev.reason})`; };
  // The recent output first (kept by the server), then what comes.
  term = {lines: [""], row: 0, col: 0};
  const console_ = new WebSocket(wsUrl("/api/console_output/ws", "backlog=1000"));
  console_.onmessage = (ev) => {
    feed(JSON.parse(ev.data).msg);
    const pre = $("console");
    pre.textContent = term.lines.join("\n");
    pre.scrollTop = pre.scrollHeight;
  };
  sockets = [status, console_];
}

for (const b of document.querySelectorAll("button[data-post]")) {
  b.onclick = () => call("POST", b.dataset.post, JSON.parse(b.dataset.body || "{}"));
}
$("add").onclick = () => {
  let plan;
  try {
    plan = JSON.parse($("plan").value);
  } catch (e) {
    $("error").textContent = String(e);
    return;
  }
  call("POST", "/api/queue/item/add", {item: {...plan, item_type: "plan"}});
};
connect();
</script>
</body>
</html>
"""
