// The page: one status stream drives everything; the queue, history and plan lists are
// fetched again only when their uids in the pushed status change (no polling).
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Api, ApiError, loadAuth, saveAuth, type Auth } from "../api";
import { AppCtx, type Ctx } from "../state";
import { openStream, type StreamState } from "../stream";
import type {
  HistoryReply,
  Item,
  PlanInfo,
  Progress,
  QueueReply,
  RunDoc,
  Status,
} from "../types";
import { Console } from "./Console";
import { Controls } from "./Controls";
import { Feedback, type Note } from "./Feedback";
import { History } from "./History";
import { Login } from "./Login";
import { PlanEditor } from "./PlanEditor";
import { QueueTable } from "./QueueTable";
import { Running } from "./Running";

export interface Devices {
  [name: string]: { is_readable?: boolean; is_movable?: boolean; is_flyable?: boolean };
}

/** The live run's documents, kept for the plot (a bounded window of events). */
export interface LiveRun {
  start: RunDoc["doc"] | null;
  descriptors: Map<string, RunDoc["doc"]>;
  events: RunDoc["doc"][];
  stop: RunDoc["doc"] | null;
}

const MAX_EVENTS = 20_000;

export function App() {
  const [auth, setAuth] = useState<Auth>(loadAuth);
  const api = useMemo(() => new Api(auth), [auth]);
  const [status, setStatus] = useState<Status | null>(null);
  const [statusState, setStatusState] = useState<StreamState>("connecting");
  const [why, setWhy] = useState<string>("");
  const [scopes, setScopes] = useState<Set<string>>(new Set());
  const [who, setWho] = useState<string>("");
  const [queue, setQueue] = useState<Item[]>([]);
  const [running, setRunning] = useState<Item | null>(null);
  const [history, setHistory] = useState<Item[]>([]);
  const [plans, setPlans] = useState<Record<string, PlanInfo>>({});
  const [devices, setDevices] = useState<Devices>({});
  const [progress, setProgress] = useState<Progress | null>(null);
  const [progressState, setProgressState] = useState<StreamState>("connecting");
  const [live, setLive] = useState<LiveRun | null>(null);
  const [notes, setNotes] = useState<Note[]>([]);
  const [editing, setEditing] = useState<Item | null>(null);
  const [asking, setAsking] = useState<{ q: string; answer: (ok: boolean) => void } | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const noteId = useRef(0);

  const notify = useCallback((text: string, undo?: () => void) => {
    const id = ++noteId.current;
    setNotes((n) => [...n.slice(-3), { id, text, undo }]);
    window.setTimeout(() => setNotes((n) => n.filter((x) => x.id !== id)), undo ? 10_000 : 6_000);
  }, []);

  const act = useCallback(
    async (label: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
        return null;
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        notify(`${label}: ${msg}`);
        return msg;
      }
    },
    [notify],
  );

  const confirm = useCallback(
    (q: string) => new Promise<boolean>((answer) => setAsking({ q, answer })),
    [],
  );

  const login = (a: Auth) => {
    saveAuth(a);
    setAuth(a);
  };

  // Who the credentials belong to, and what they may do: controls follow the scopes.
  useEffect(() => {
    let gone = false;
    api
      .get<{ roles: string[]; scopes: string[] }>("/api/auth/scopes")
      .then((r) => {
        if (gone) return;
        setScopes(new Set(r.scopes));
        return api.get<{ identities?: { id: string }[] }>("/api/auth/whoami").then((w) => {
          if (!gone) setWho(`${w.identities?.[0]?.id ?? "?"} (${r.roles.join(", ") || "no role"})`);
        });
      })
      .catch((e: unknown) => {
        if (gone) return;
        setScopes(new Set());
        setWho(e instanceof ApiError && e.status === 401 ? "" : "?");
      });
    return () => {
      gone = true;
    };
  }, [api]);

  // The status stream: the page's heartbeat.
  useEffect(() => {
    const s = openStream(
      () => api.wsUrl("/api/status/ws"),
      (data) => {
        const st = (data as { msg?: { status?: Status } }).msg?.status;
        if (st) setStatus(st);
      },
      (state, reason) => {
        setStatusState(state);
        setWhy(reason ?? "");
      },
    );
    return () => s.close();
  }, [api]);

  const queueUid = status?.plan_queue_uid;
  const runningUid = status?.running_item_uid;
  useEffect(() => {
    if (!queueUid || !scopes.has("read:queue")) return;
    let gone = false;
    api
      .get<QueueReply>("/api/queue/get")
      .then((r) => {
        if (gone) return;
        setQueue(r.items);
        const ri = r.running_item as Item;
        setRunning(ri && ri.item_uid ? ri : null);
        const uids = new Set(r.items.map((i) => i.item_uid!));
        setSelected((sel) => new Set([...sel].filter((u) => uids.has(u))));
      })
      .catch(() => undefined);
    return () => {
      gone = true;
    };
  }, [api, queueUid, runningUid, scopes]);

  const historyUid = status?.plan_history_uid;
  useEffect(() => {
    if (!historyUid || !scopes.has("read:history")) return;
    let gone = false;
    api
      .get<HistoryReply>("/api/history/get")
      .then((r) => !gone && setHistory(r.items))
      .catch(() => undefined);
    return () => {
      gone = true;
    };
  }, [api, historyUid, scopes]);

  const plansUid = status?.plans_allowed_uid;
  const devicesUid = status?.devices_allowed_uid;
  useEffect(() => {
    if (!plansUid || !scopes.has("read:resources")) return;
    api
      .get<{ plans_allowed: Record<string, PlanInfo> }>("/api/plans/allowed")
      .then((r) => setPlans(r.plans_allowed))
      .catch(() => undefined);
  }, [api, plansUid, scopes]);
  useEffect(() => {
    if (!devicesUid || !scopes.has("read:resources")) return;
    api
      .get<{ devices_allowed: Devices }>("/api/devices/allowed")
      .then((r) => setDevices(r.devices_allowed))
      .catch(() => undefined);
  }, [api, devicesUid, scopes]);

  // Live progress and the running run's documents (the progress helper's routes, ADR 25):
  // a gateway without them leaves the panel with the status alone.
  useEffect(() => {
    const s = openStream(
      () => api.wsUrl("/api/progress/ws"),
      (data) => {
        const p = (data as { msg?: Progress }).msg;
        if (p && typeof p.point === "number") setProgress(p);
      },
      (state) => setProgressState(state),
    );
    return () => s.close();
  }, [api]);

  useEffect(() => {
    let run: LiveRun | null = null;
    let pending = false;
    const flush = () => {
      pending = false;
      setLive(run ? { ...run } : null);
    };
    const s = openStream(
      () => api.wsUrl("/api/documents/ws", { run: "current" }),
      (data) => {
        const d = (data as { msg?: RunDoc }).msg;
        if (!d || typeof d.name !== "string") return;
        if (d.name === "start") {
          run = { start: d.doc, descriptors: new Map(), events: [], stop: null };
        } else if (!run) {
          return;
        } else if (d.name === "descriptor") {
          run.descriptors.set(String(d.doc.uid), d.doc);
        } else if (d.name === "event") {
          run.events.push(d.doc);
          if (run.events.length > MAX_EVENTS) run.events.splice(0, run.events.length - MAX_EVENTS);
        } else if (d.name === "event_page") {
          run.events.push(...pageToEvents(d.doc));
        } else if (d.name === "stop") {
          run.stop = d.doc;
        }
        // One render per frame however fast documents come.
        if (!pending) {
          pending = true;
          requestAnimationFrame(flush);
        }
      },
      () => undefined,
    );
    return () => s.close();
  }, [api]);

  const ctx: Ctx = { api, status, scopes, act, notify, confirm };
  const connected = statusState === "open" && status !== null;
  return (
    <AppCtx.Provider value={ctx}>
      <header class="top" role="banner">
        <h1>qserver</h1>
        <StatusLine status={status} state={statusState} why={why} />
        <nav aria-label="Sections">
          <a href="#queue">Queue</a> <a href="#editor">Add plan</a> <a href="#running">Running</a>{" "}
          <a href="#history">History</a> <a href="#console">Console</a>
        </nav>
        <Login auth={auth} who={who} onLogin={login} />
      </header>
      <main class={connected ? "" : "disconnected"}>
        <Controls />
        <div class="grid">
          <div class="col">
            <QueueTable
              items={queue}
              running={running}
              selected={selected}
              setSelected={setSelected}
              onEdit={(it) => {
                setEditing(it);
                document.getElementById("editor")?.scrollIntoView();
              }}
            />
            <PlanEditor
              plans={plans}
              devices={devices}
              editing={editing}
              doneEditing={() => setEditing(null)}
              selected={[...selected]}
            />
          </div>
          <div class="col">
            <Running item={running} progress={progress} progressState={progressState} live={live} />
            <History items={history} />
            <Console />
          </div>
        </div>
      </main>
      <Feedback notes={notes} asking={asking} done={() => setAsking(null)} />
    </AppCtx.Provider>
  );
}

function pageToEvents(page: RunDoc["doc"]): RunDoc["doc"][] {
  const seq = (page.seq_num as number[]) ?? [];
  const data = (page.data as Record<string, unknown[]>) ?? {};
  const times = (page.time as number[]) ?? [];
  return seq.map((n, i) => ({
    seq_num: n,
    time: times[i],
    descriptor: page.descriptor,
    data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, v[i]])),
  })) as RunDoc["doc"][];
}

function StatusLine(props: { status: Status | null; state: StreamState; why: string }) {
  const { status, state, why } = props;
  if (state === "denied") return <span class="state bad" role="status">Not allowed: {why}</span>;
  if (!status || state !== "open")
    return <span class="state" role="status">{state === "open" ? "waiting for status…" : "connecting…"}</span>;
  const env = status.worker_environment_exists ? `environment ${status.worker_environment_state}` : "no environment";
  return (
    <span class="state" role="status" aria-live="polite">
      <b data-testid="manager-state">{status.manager_state}</b> · RE {status.re_state ?? "–"} · {env} · queue{" "}
      {status.items_in_queue} · history {status.items_in_history}
      {status.queue_stop_pending ? " · stop pending" : ""}
    </span>
  );
}
