// The running plan: its item, live progress (point n of N, elapsed, ETA, positions) and a
// live plot of its run's data, all pushed (progress and documents WebSockets, ADR 25/26).
import { useMemo, useState } from "preact/hooks";
import { describeArgs, fmtDuration, useApp } from "../state";
import type { StreamState } from "../stream";
import type { Item, Progress } from "../types";
import type { LiveRun } from "./App";
import { Plot } from "./Plot";

export function Running(props: { item: Item | null; progress: Progress | null; progressState: StreamState; live: LiveRun | null }) {
  const ctx = useApp();
  const { item, live } = props;
  const summary = ctx.status?.progress ?? null;
  // The detailed event when it belongs to the run the status names; the status's summary else.
  const p = props.progress;
  const point = p?.point ?? summary?.point ?? null;
  const total = p?.num_points ?? summary?.num_points ?? null;
  const elapsed = p?.elapsed ?? summary?.elapsed ?? null;
  const eta = p?.eta ?? summary?.eta ?? null;
  const active = !!item || (p !== null && !p.done);
  return (
    <section id="running" class="panel" aria-label="Running plan">
      <h2>Running</h2>
      {!item && <p class="empty">No plan is running.</p>}
      {item && (
        <p>
          <b data-testid="running-name">{item.name}</b> <span class="mono">{describeArgs(item.args, item.kwargs)}</span>{" "}
          <small>by {item.user ?? "?"}</small>
        </p>
      )}
      {active && point !== null && (
        <div class="progress" data-testid="progress">
          <progress
            max={total ?? undefined}
            value={total ? point : undefined}
            aria-label="Points done"
            aria-valuetext={`point ${point} of ${total ?? "?"}`}
          />
          <span data-testid="progress-text">
            point {point} of {total ?? "?"} · elapsed {fmtDuration(elapsed)} · ETA {fmtDuration(eta)}
            {p?.done ? ` · ${p.exit_status ?? "done"}` : ""}
          </span>
          {p && Object.keys(p.positions).length > 0 && (
            <span class="mono" data-testid="positions">
              {Object.entries(p.positions)
                .map(([m, v]) => `${m} = ${typeof v === "number" ? v.toPrecision(5) : String(v)}`)
                .join(" · ")}
            </span>
          )}
        </div>
      )}
      {props.progressState === "missing" && <p class="empty">Live progress is not offered by this gateway.</p>}
      {live && <LivePlot run={live} />}
    </section>
  );
}

function LivePlot(props: { run: LiveRun }) {
  const { run } = props;
  const [picked, setPicked] = useState<string[] | null>(null);
  const [xChoice, setXChoice] = useState<string>("");
  const primary = useMemo(() => {
    for (const d of run.descriptors.values()) if ((d.name ?? "primary") === "primary") return d;
    return undefined;
  }, [run.descriptors.size]);
  const keys = primary ? (primary.data_keys as Record<string, { dtype?: string }>) : {};
  const numeric = Object.keys(keys).filter((k) => keys[k].dtype === "number" || keys[k].dtype === "integer");
  const motors = ((run.start?.motors as string[] | undefined) ?? []).flatMap((m) => numeric.filter((k) => k === m || k.startsWith(m + "_")).slice(0, 1));
  const hinted = (run.start?.hints as { dimensions?: [string[], string][] } | undefined)?.dimensions?.[0]?.[0] ?? [];
  const xKey = xChoice || hinted.find((h) => numeric.includes(h)) || motors[0] || "time";
  const detectors = ((run.start?.detectors as string[] | undefined) ?? []).flatMap((d) => numeric.filter((k) => k === d || k.startsWith(d + "_")));
  const ys = (picked ?? (detectors.length ? detectors.slice(0, 3) : numeric.filter((k) => k !== xKey).slice(0, 2))).filter((k) => numeric.includes(k));
  const primaryUid = primary?.uid;
  const events = run.events.filter((e) => e.descriptor === primaryUid);
  const t0 = (run.start?.time as number | undefined) ?? 0;
  const x = events.map((e, i) => {
    if (xKey === "time") return ((e.time as number) ?? 0) - t0;
    const v = (e.data as Record<string, unknown>)[xKey];
    return typeof v === "number" ? v : i;
  });
  const series = ys.map((k) => ({ label: k, data: events.map((e) => { const v = (e.data as Record<string, unknown>)[k]; return typeof v === "number" ? v : null; }) }));
  return (
    <div class="liveplot">
      <div class="row">
        <span>
          Run <span class="mono">{String(run.start?.uid ?? "").slice(0, 8)}</span> scan {String(run.start?.scan_id ?? "?")} ·{" "}
          <span data-testid="plot-points">{events.length}</span> points{run.stop ? ` · ${String(run.stop.exit_status)}` : ""}
        </span>
        <label>
          x{" "}
          <select value={xKey} onChange={(e) => setXChoice(e.currentTarget.value)}>
            <option value="time">time</option>
            {numeric.map((k) => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </label>
      </div>
      <fieldset class="row">
        <legend>y</legend>
        {numeric
          .filter((k) => k !== xKey)
          .map((k) => (
            <label key={k}>
              <input
                type="checkbox"
                checked={ys.includes(k)}
                onChange={(e) => setPicked(e.currentTarget.checked ? [...ys, k] : ys.filter((y) => y !== k))}
              />{" "}
              {k}
            </label>
          ))}
      </fieldset>
      {ys.length > 0 && <Plot x={x} ys={series} xLabel={xKey} />}
    </div>
  );
}
