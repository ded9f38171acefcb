// A dry run's report (ADR 31): points, motors against their limits (violations marked),
// detectors, the estimated duration. Shown for a proposal and for a queue item.
import { fmtDuration } from "../state";
import type { DryRunReply, MotorRange } from "../types";

function num(v: number | null | undefined): string {
  return v === null || v === undefined ? "–" : String(Number(v.toPrecision(6)));
}

function range(m: MotorRange): string {
  return m.min === null ? "–" : m.min === m.max ? num(m.min) : `${num(m.min)} .. ${num(m.max)}`;
}

/** `reply` null: the dry run is being asked for. */
export function DryRunView(props: { reply: DryRunReply | null; label: string }) {
  const { reply } = props;
  if (!reply)
    return (
      <div class="dryrun" role="region" aria-label={props.label} aria-busy="true">
        Simulating…
      </div>
    );
  const r = reply.report;
  if (!reply.success || !r)
    return (
      <div class="dryrun" role="region" aria-label={props.label}>
        <p class="bad" role="alert">
          No dry run: {reply.msg || "no report"}
        </p>
      </div>
    );
  const bad = new Set(r.violations.map((v) => v.device));
  const declared = r.num_points_declared !== null && r.num_points_declared !== r.num_points;
  return (
    <div class="dryrun" role="region" aria-label={props.label}>
      <dl>
        <dt>Points</dt>
        <dd data-testid="dry-run-points">
          {r.num_points}
          {declared ? ` (declared ${r.num_points_declared})` : ""}
          {r.runs !== 1 ? ` in ${r.runs} runs` : ""}
        </dd>
        <dt>Estimated duration</dt>
        <dd>
          {r.estimated_duration === null
            ? "unknown"
            : r.estimated_duration < 60
              ? `${r.estimated_duration.toFixed(1)} s`
              : fmtDuration(r.estimated_duration)}
          {r.duration_unknown.length ? ` (not counted: ${r.duration_unknown.join(", ")})` : ""}
        </dd>
        <dt>Detectors</dt>
        <dd>{r.detectors.join(", ") || "none"}</dd>
        {r.flyers.length > 0 && (
          <>
            <dt>Flyers</dt>
            <dd>{r.flyers.join(", ")}</dd>
          </>
        )}
      </dl>
      {r.motors.length > 0 && (
        <table aria-label="Motors">
          <thead>
            <tr>
              <th>motor</th>
              <th>from</th>
              <th>range</th>
              <th>limits</th>
              <th>moves</th>
            </tr>
          </thead>
          <tbody>
            {r.motors.map((m) => (
              <tr key={m.name} class={bad.has(m.name) || m.within_limits === false ? "violation" : ""}>
                <td>{m.name}</td>
                <td>{num(m.start)}</td>
                <td>{range(m)}</td>
                <td>{m.limits ? `[${num(m.limits[0])}, ${num(m.limits[1])}]` : "none"}</td>
                <td>{m.moves}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {r.violations.length > 0 && (
        <ul class="violations" aria-label="Limit violations">
          {r.violations.map((v) => (
            <li key={v.device} class="bad">
              {v.msg}
            </li>
          ))}
        </ul>
      )}
      {!r.complete && <p class="bad">Cut short: the report covers the plan's start only.</p>}
      {r.notes.map((n) => (
        <p key={n} class="desc">
          {n}
        </p>
      ))}
    </div>
  );
}
