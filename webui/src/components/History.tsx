// Finished items: filter, copy back to the queue, clear; a run's data and metadata on demand.
import { useMemo, useState } from "preact/hooks";
import { can, describeArgs, fmtDuration, fmtTime, useApp } from "../state";
import type { Item, RunDoc } from "../types";
import { Plot } from "./Plot";

const SHOWN = 200;

function bare(item: Item): Item {
  const { item_uid: _u, result: _r, user: _us, user_group: _g, ...rest } = item;
  return rest;
}

export function History(props: { items: Item[] }) {
  const ctx = useApp();
  const [status, setStatus] = useState("");
  const [user, setUser] = useState("");
  const [run, setRun] = useState<string | null>(null);
  const newest = useMemo(() => [...props.items].reverse(), [props.items]);
  const statuses = useMemo(() => [...new Set(props.items.map((i) => i.result?.exit_status ?? "?"))].sort(), [props.items]);
  const users = useMemo(() => [...new Set(props.items.map((i) => i.user ?? ""))].filter(Boolean).sort(), [props.items]);
  const shown = newest.filter((i) => (!status || i.result?.exit_status === status) && (!user || i.user === user));
  const editable = can(ctx, "write:queue:edit");
  return (
    <section id="history" class="panel" aria-label="History">
      <h2>
        History <small>({props.items.length})</small>
      </h2>
      <div class="row">
        <label>
          Status{" "}
          <select value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
            <option value="">all</option>
            {statuses.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          User{" "}
          <select value={user} onChange={(e) => setUser(e.currentTarget.value)}>
            <option value="">all</option>
            {users.map((u) => (
              <option key={u}>{u}</option>
            ))}
          </select>
        </label>
        <button
          type="button"
          class="danger"
          disabled={!props.items.length || !can(ctx, "write:history:edit")}
          onClick={async () => {
            if (await ctx.confirm(`Clear the history (${props.items.length} items)?`))
              await ctx.act("Clear history", () => ctx.api.post("/api/history/clear"));
          }}
        >
          Clear history
        </button>
      </div>
      <div class="scroll">
        <table>
          <thead>
            <tr>
              <th>Plan</th>
              <th>Status</th>
              <th>User</th>
              <th>Started</th>
              <th>Took</th>
              <th>Scans / runs</th>
              <th>
                <span class="sr">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {shown.slice(0, SHOWN).map((it, k) => {
              const r = it.result;
              return (
                <tr key={(it.item_uid ?? "") + k} class={"exit-" + (r?.exit_status ?? "unknown")}>
                  <td title={describeArgs(it.args, it.kwargs)}>
                    {it.name} <small class="mono">{describeArgs(it.args, it.kwargs)}</small>
                  </td>
                  <td title={r?.msg}>
                    {r?.exit_status ?? "?"}
                    {r?.reason ? <small> ({r.reason}{r.reviewer ? `, ${r.reviewer}` : ""})</small> : ""}
                  </td>
                  <td>{it.user ?? ""}</td>
                  <td>{fmtTime(r?.time_start ?? 0)}</td>
                  <td>{r && r.time_stop ? fmtDuration(r.time_stop - r.time_start) : "–"}</td>
                  <td>
                    {(r?.run_uids ?? []).map((u, i) => (
                      <button type="button" class="link" key={u} onClick={() => setRun(run === u ? null : u)} title={u}>
                        {r?.scan_ids?.[i] !== undefined ? `#${r.scan_ids[i]} ` : ""}
                        {u.slice(0, 8)}
                      </button>
                    ))}
                  </td>
                  <td>
                    <button
                      type="button"
                      disabled={!editable}
                      aria-label={`Copy ${it.name} to the queue`}
                      onClick={() =>
                        ctx.act("Copy to queue", async () => {
                          await ctx.api.post("/api/queue/item/add", { item: bare(it) });
                          ctx.notify(`Copied ${it.name} to the queue`);
                        })
                      }
                    >
                      Copy to queue
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
        {shown.length > SHOWN && <p class="empty">The newest {SHOWN} of {shown.length} are shown.</p>}
      </div>
      {run && <RunView uid={run} />}
    </section>
  );
}

function RunView(props: { uid: string }) {
  const ctx = useApp();
  const [docs, setDocs] = useState<RunDoc[] | null>(null);
  const [error, setError] = useState("");
  useMemo(() => {
    setDocs(null);
    setError("");
    ctx.api
      .get<{ documents: RunDoc[] }>(`/api/runs/${encodeURIComponent(props.uid)}/documents`)
      .then((r) => setDocs(r.documents))
      .catch((e: unknown) => setError(e instanceof Error ? e.message : String(e)));
  }, [props.uid]);
  if (error) return <p class="bad">Run {props.uid.slice(0, 8)}: {error}</p>;
  if (!docs) return <p>Loading run {props.uid.slice(0, 8)}…</p>;
  const start = docs.find((d) => d.name === "start")?.doc ?? {};
  const stop = docs.find((d) => d.name === "stop")?.doc ?? {};
  const primary = docs.find((d) => d.name === "descriptor" && (d.doc.name ?? "primary") === "primary")?.doc;
  const events = docs.filter((d) => d.name === "event" && d.doc.descriptor === primary?.uid).map((d) => d.doc);
  const keys = Object.entries((primary?.data_keys as Record<string, { dtype?: string }>) ?? {})
    .filter(([, v]) => v.dtype === "number" || v.dtype === "integer")
    .map(([k]) => k);
  const motors = (start.motors as string[] | undefined) ?? [];
  const motor = motors.map((m) => keys.find((k) => k === m)).find(Boolean);
  // The detectors' fields; the motors' own fields (setpoints) only when there is nothing else.
  const ofMotor = (k: string) => motors.some((m) => k === m || k.startsWith(m + "_"));
  const dets = keys.filter((k) => !ofMotor(k));
  const ys = (dets.length ? dets : keys.filter((k) => k !== motor)).slice(0, 3);
  const x = events.map((e, i) => (motor ? ((e.data as Record<string, number>)[motor] ?? i) : (e.seq_num as number)));
  return (
    <div class="runview" aria-label="Run">
      <h3>
        Run <span class="mono">{props.uid}</span> · {String(stop.exit_status ?? "")}
      </h3>
      {ys.length > 0 && (
        <Plot
          x={x}
          ys={ys.map((k) => ({ label: k, data: events.map((e) => (e.data as Record<string, number>)[k] ?? null) }))}
          xLabel={motor ?? "seq_num"}
        />
      )}
      <details>
        <summary>Metadata</summary>
        <pre>{JSON.stringify(start, null, 2)}</pre>
      </details>
    </div>
  );
}
