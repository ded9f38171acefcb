// What every panel shares: the API, the pushed status, the caller's scopes, feedback.
import { createContext } from "preact";
import { useContext } from "preact/hooks";
import type { Api } from "./api";
import type { Status } from "./types";

export interface Ctx {
  api: Api;
  status: Status | null;
  scopes: Set<string>;
  /** Run an action; its error, if any, goes to the message bar (and is returned). */
  act: (label: string, fn: () => Promise<unknown>) => Promise<string | null>;
  notify: (text: string, undo?: () => void) => void;
  confirm: (question: string) => Promise<boolean>;
}

export const AppCtx = createContext<Ctx | null>(null);

export function useApp(): Ctx {
  const ctx = useContext(AppCtx);
  if (!ctx) throw new Error("useApp outside the app");
  return ctx;
}

export function can(ctx: Ctx, scope: string): boolean {
  return ctx.scopes.has(scope);
}

export function fmtDuration(s: number | null | undefined): string {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  const t = Math.max(0, Math.round(s));
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const sec = t % 60;
  const mm = h ? String(m).padStart(2, "0") : String(m);
  return (h ? `${h}:` : "") + `${mm}:${String(sec).padStart(2, "0")}`;
}

export function fmtTime(unix: number): string {
  if (!unix) return "–";
  return new Date(unix * 1000).toLocaleString();
}

// Items are replaced, never changed in place: their text is worked out once (a 10,000-item
// queue scrolls without stringifying rows again on every frame).
const described = new WeakMap<object, string>();

export function describeArgs(args: unknown[] | undefined, kwargs: object | undefined): string {
  const key = args ?? kwargs;
  const hit = key ? described.get(key) : undefined;
  if (hit !== undefined) return hit;
  const a = (args ?? []).map((v) => JSON.stringify(v));
  const k = Object.entries(kwargs ?? {}).map(([n, v]) => `${n}=${JSON.stringify(v)}`);
  const text = [...a, ...k].join(", ");
  if (key) described.set(key, text);
  return text;
}
