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
  Proposal,
  ProposalList,
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
import { Proposals } from "./Proposals";
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
  const [opens, setOpens] = useState(0);
  const [why, setWhy] = useState<string>("");
  const [scopes, setScopes] = useState<Set<string>>(new Set());
  const [who, setWho] = useState<string>("");
  const [user, setUser] = useState<string>("");
  const [queue, setQueue] = useState<Item[]>([]);
  const [running, setRunning] = useState<Item | null>(null);
  const [history, setHistory] = useState<Item[]>([]);
  const [proposals, setProposals] = useState<Proposal[]>([]);
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

  // A login's token is renewed before it expires (at 80 % of its life), in place.
  useEffect(() => {
    if (auth.kind !== "token") return;
    let timer: number | undefined;
    let stopped = false;
    const plan = () => {
      if (stopped) return;
      const a = api.auth;
      const left = a.kind === "token" ? a.expires - Date.now() / 1000 : 0;
      timer = window.setTimeout(renew, Math.max(1, left * 0.8) * 1000);
    };
    const renew = async () => {
      if (await api.refresh()) plan();
      else if (!stopped) {
        notify("The session is over: log in again");
        login({ kind: "none" });
      }
    };
    plan();
    return () => {
      stopped = true;
      window.clearTimeout(timer);
    };
  }, [api]);

  // Who the credentials belong to, and what they may do: controls follow the scopes
  // (asked again whenever the status stream connects: the gateway may have been away).
  useEffect(() => {
    let gone = false;
    api
      .get<{ roles: string[]; scopes: string[] }>("/api/auth/scopes")
      .then((r) => {
        if (gone) return;
        setScopes(new Set(r.scopes));
        return api.get<{ identities?: { id: string }[] }>("/api/auth/whoami").then((w) => {
          if (gone) return;
          setUser(w.identities?.[0]?.id ?? "");
          setWho(`${w.identities?.[0]?.id ?? "?"} (${r.roles.join(", ") || "no role"})`);
        });
      })
      .catch((e: unknown) => {
        if (gone) return;
        setScopes(new Set());
        setUser("");
        setWho(e instanceof ApiError && e.status === 401 ? "" : "?");
      });
    return () => {
      gone = true;
    };
  }, [api, opens]);

  // The status stream: the page's heartbeat. The gateway pushes on change (and once a
  // second); one GET on load (and on each reconnection) shows the state without waiting.
  useEffect(() => {
    let pushes = 0;
    const once = () => {
      const before = pushes;
      api
        .get<Status>("/api/status")
        .then((st) => pushes === before && setStatus(st))
        .catch(() => undefined);
    };
    once();
    let opened = false;
    const s = openStream(
      () => api.wsUrl("/api/status/ws"),
      (data) => {
        const st = (data as { msg?: { status?: Status } }).msg?.status;
        if (st) {
          pushes++;
          setStatus(st);
        }
      },
      (state, reason) => {
        setStatusState(state);
        setWhy(reason ?? "");
        if (state === "open") {
          if (opened) once();
          opened = true;
          setOpens((n) => n + 1);
        }
      },
    );
    return () => s.close();
  }, [api]);

  // The lists are fetched at once on load (beside the status) and again whenever the
  // pushed status names another version than the one shown.
  usePushed<QueueReply>(api, "/api/queue/get", status?.plan_queue_uid, (r) => r.plan_queue_uid, (r) => {
    setQueue(r.items);
    const ri = r.running_item as Item;
    setRunning(ri && ri.item_uid ? ri : null);
    const uids = new Set(r.items.map((i) => i.item_uid!));
    setSelected((sel) => (sel.size ? new Set([...sel].filter((u) => uids.has(u))) : sel));
  }, status?.running_item_uid);
  usePushed<HistoryReply>(api, "/api/history/get", status?.plan_history_uid, (r) => r.plan_history_uid, (r) =>
    setHistory(r.items),
  );
  usePushed<ProposalList>(api, "/api/proposals/list", status?.proposals_uid, (r) => r.proposals_uid, (r) =>
    setProposals(r.proposals),
  );
  usePushed<{ plans_allowed: Record<string, PlanInfo>; plans_allowed_uid?: string }>(
    api,
    "/api/plans/allowed",
    status?.plans_allowed_uid,
    (r) => r.plans_allowed_uid,
    (r) => setPlans(r.plans_allowed),
  );
  usePushed<{ devices_allowed: Devices; devices_allowed_uid?: string }>(
    api,
    "/api/devices/allowed",
    status?.devices_allowed_uid,
    (r) => r.devices_allowed_uid,
    (r) => setDevices(r.devices_allowed),
  );

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
          <a href="#queue">Queue</a> <a href="#editor">Add plan</a> <a href="#proposals">Proposals</a>{" "}
          <a href="#running">Running</a>{" "}
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
            <Proposals proposals={proposals} queue={queue} user={user} />
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

/** GET `path` now and again whenever `uid` (pushed) differs from the uid of the last reply. */
function usePushed<T>(
  api: Api,
  path: string,
  uid: string | undefined,
  uidOf: (r: T) => string | undefined,
  apply: (r: T) => void,
  extra?: unknown,
) {
  const shown = useRef<{ uid?: string; extra?: unknown; api?: Api }>({});
  const issued = useRef(0);
  const applied = useRef(0);
  useEffect(() => {
    const was = shown.current;
    if (uid !== undefined && uid === was.uid && extra === was.extra && api === was.api) return;
    const n = ++issued.current;
    api
      .get<T>(path)
      .then((r) => {
        if (n < applied.current) return; // an older answer arriving late
        applied.current = n;
        shown.current = { uid: uidOf(r), extra, api };
        apply(r);
      })
      .catch(() => undefined);
  }, [api, uid, extra]);
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
      {status.items_in_proposals ? ` · proposals ${status.items_in_proposals}` : ""}
      {status.queue_stop_pending ? " · stop pending" : ""}
    </span>
  );
}
