// Environment, queue and RunEngine controls: each enabled only where the state (and the
// caller's scopes) allow it; the ones that lose work ask first.
import { useEffect, useState } from "preact/hooks";
import { can, useApp } from "../state";

interface Control {
  label: string;
  path: string;
  scope: string;
  enabled: boolean;
  body?: object;
  ask?: string;
}

export function Controls() {
  const ctx = useApp();
  const s = ctx.status;
  const [lockKey, setLockKey] = useState("");
  useEffect(() => {
    ctx.api.lockKey = lockKey;
  }, [ctx.api, lockKey]);
  const idle = s?.manager_state === "idle";
  const env = !!s?.worker_environment_exists;
  const re = s?.re_state;
  const executing = s?.manager_state === "executing_queue";
  const controls: Control[] = [
    { label: "Open environment", path: "/api/environment/open", scope: "write:manager:control", enabled: idle && !env },
    { label: "Close environment", path: "/api/environment/close", scope: "write:manager:control", enabled: idle && env },
    {
      label: "Destroy environment",
      path: "/api/environment/destroy",
      scope: "write:manager:control",
      enabled: env,
      ask: "Destroy the environment? A running plan is killed without cleanup.",
    },
    {
      label: "Start queue",
      path: "/api/queue/start",
      scope: "write:queue:control",
      enabled: idle && env && (s?.items_in_queue ?? 0) > 0,
    },
    {
      label: "Stop queue",
      path: "/api/queue/stop",
      scope: "write:queue:control",
      enabled: executing && !s?.queue_stop_pending,
    },
    { label: "Cancel stop", path: "/api/queue/stop/cancel", scope: "write:queue:control", enabled: !!s?.queue_stop_pending },
    {
      label: "Pause",
      path: "/api/re/pause",
      scope: "write:plan:control",
      enabled: re === "running" && !s?.pause_pending,
      body: { option: "deferred" },
    },
    {
      label: "Pause now",
      path: "/api/re/pause",
      scope: "write:plan:control",
      enabled: re === "running" && !s?.pause_pending,
      body: { option: "immediate" },
    },
    { label: "Resume", path: "/api/re/resume", scope: "write:plan:control", enabled: re === "paused" },
    { label: "Stop plan", path: "/api/re/stop", scope: "write:plan:control", enabled: re === "paused" },
    {
      label: "Abort",
      path: "/api/re/abort",
      scope: "write:plan:control",
      enabled: re === "paused",
      ask: "Abort the paused plan? It ends as failed.",
    },
    {
      label: "Halt",
      path: "/api/re/halt",
      scope: "write:plan:control",
      enabled: re === "paused",
      ask: "Halt the paused plan? No cleanup runs.",
    },
  ];
  const run = async (c: Control) => {
    if (c.ask && !(await ctx.confirm(c.ask))) return;
    await ctx.act(c.label, () => ctx.api.post(c.path, c.body));
  };
  const mode = s?.plan_queue_mode;
  const setMode = (change: object) =>
    ctx.act("Queue mode", () => ctx.api.post("/api/queue/mode/set", { mode: change }));
  const mayControl = can(ctx, "write:queue:control");
  const locked = s?.lock.environment || s?.lock.queue;
  return (
    <section class="controls" aria-label="Controls">
      <div class="row">
        {controls.map((c) => (
          <button
            type="button"
            key={c.label}
            class={c.ask ? "danger" : ""}
            disabled={!s || !c.enabled || !can(ctx, c.scope)}
            onClick={() => run(c)}
          >
            {c.label}
          </button>
        ))}
      </div>
      <div class="row">
        <label>
          <input
            type="checkbox"
            checked={!!mode?.loop}
            disabled={!s || !mayControl}
            onChange={(e) => setMode({ loop: e.currentTarget.checked })}
          />{" "}
          Loop
        </label>
        <label>
          <input
            type="checkbox"
            checked={!!mode?.ignore_failures}
            disabled={!s || !mayControl}
            onChange={(e) => setMode({ ignore_failures: e.currentTarget.checked })}
          />{" "}
          Ignore failures
        </label>
        <label>
          <input
            type="checkbox"
            checked={!!s?.queue_autostart_enabled}
            disabled={!s || !mayControl}
            onChange={(e) =>
              ctx.act("Autostart", () => ctx.api.post("/api/queue/autostart", { enable: e.currentTarget.checked }))
            }
          />{" "}
          Autostart
        </label>
        <span class={locked ? "bad" : ""} data-testid="lock-state">
          {locked
            ? `Locked (${[s?.lock.environment && "environment", s?.lock.queue && "queue"].filter(Boolean).join(", ")})`
            : "Unlocked"}
        </span>
        <label>
          Lock key{" "}
          <input
            type="password"
            size={10}
            value={lockKey}
            onInput={(e) => setLockKey(e.currentTarget.value)}
          />
        </label>
        <button
          type="button"
          disabled={!s || !lockKey || !!locked || !can(ctx, "write:lock")}
          onClick={() =>
            ctx.act("Lock", () =>
              ctx.api.post("/api/lock", { lock_key: lockKey, environment: true, queue: true, note: "locked from the web page" }),
            )
          }
        >
          Lock
        </button>
        <button
          type="button"
          disabled={!s || !lockKey || !locked || !can(ctx, "write:lock")}
          onClick={() => ctx.act("Unlock", () => ctx.api.post("/api/unlock", { lock_key: lockKey }))}
        >
          Unlock
        </button>
      </div>
    </section>
  );
}
