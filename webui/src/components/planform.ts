// From a plan's description (`plans_allowed`) to form widgets, and from their values to an item.
import type { Json, PlanInfo, PlanParam } from "../types";
import type { Devices } from "./App";

export type Widget =
  | { kind: "devices"; multi: boolean; options: string[] }
  | { kind: "enum"; options: string[] }
  | { kind: "number"; integer: boolean; min?: number; max?: number; step?: number }
  | { kind: "bool" }
  | { kind: "text" }
  | { kind: "list" } // values separated by commas, or a JSON list
  | { kind: "json" };

export type Value = string | string[];
export type Values = Record<string, Value>;

const DEVICE_MARK = /__(READABLE|MOVABLE|FLYABLE|DEVICE)__/;
const SEQUENCE = /^(collections\.abc\.|typing\.)?(Sequence|Iterable|Collection|list|List|tuple|Tuple|set)\[/;

function num(v: string | number | undefined): number | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  const n = Number(v);
  return isFinite(n) ? n : undefined;
}

export function widgetOf(p: PlanParam, devices: Devices): Widget {
  const ann = p.annotation;
  const type = ann?.type ?? "";
  if (p.kind.name === "VAR_POSITIONAL") return { kind: "list" };
  if (p.kind.name === "VAR_KEYWORD") return { kind: "json" };
  const named = Object.entries(ann?.devices ?? {}).find(([t]) => type.includes(t));
  const mark = DEVICE_MARK.exec(type);
  if (named || mark) {
    let options: string[];
    if (named) options = named[1];
    else {
      const want = mark![1];
      options = Object.keys(devices)
        .filter((d) => {
          const dev = devices[d];
          if (want === "READABLE") return dev.is_readable;
          if (want === "MOVABLE") return dev.is_movable;
          if (want === "FLYABLE") return dev.is_flyable;
          return true;
        })
        .sort();
    }
    // "__MOVABLE__ | typing.Any" takes other values too: a free list then.
    if (/typing\.Any|\bAny\b/.test(type) && !SEQUENCE.test(type)) return { kind: "text" };
    return { kind: "devices", multi: SEQUENCE.test(type), options };
  }
  const en = Object.entries(ann?.enums ?? {}).find(([t]) => type.includes(t));
  if (en) return { kind: "enum", options: en[1] };
  const bare = type.replace(/\s*\|\s*None$/, "").replace(/^typing\.Optional\[(.*)\]$/, "$1");
  if (bare === "int" || bare === "float") {
    return { kind: "number", integer: bare === "int", min: num(p.min), max: num(p.max), step: num(p.step) };
  }
  if (bare === "bool") return { kind: "bool" };
  if (bare === "str") return { kind: "text" };
  if (SEQUENCE.test(bare)) return { kind: "list" };
  if (!type && p.default === undefined) return { kind: "text" };
  return { kind: "json" };
}

/** A text typed in a field as a value: JSON where it parses, else the text itself. */
function loose(text: string): Json {
  const t = text.trim();
  try {
    return JSON.parse(t) as Json;
  } catch {
    return t;
  }
}

export function parseList(text: string): Json[] {
  const t = text.trim();
  if (!t) return [];
  if (t.startsWith("[")) {
    const v = JSON.parse(t) as Json;
    if (!Array.isArray(v)) throw new Error("not a list");
    return v;
  }
  return t.split(",").map((s) => loose(s));
}

export function valueOf(w: Widget, raw: Value): Json {
  if (Array.isArray(raw)) return raw;
  switch (w.kind) {
    case "number": {
      const n = Number(raw);
      if (!isFinite(n)) throw new Error("not a number");
      if (w.integer && !Number.isInteger(n)) throw new Error("must be a whole number");
      if (w.min !== undefined && n < w.min) throw new Error(`must be at least ${w.min}`);
      if (w.max !== undefined && n > w.max) throw new Error(`must be at most ${w.max}`);
      return n;
    }
    case "bool":
      return raw === "true";
    case "text":
    case "enum":
      return raw;
    case "devices":
      return raw;
    case "list":
      try {
        return parseList(raw);
      } catch {
        throw new Error("not a list: write values separated by commas, or JSON");
      }
    case "json":
      try {
        return JSON.parse(raw) as Json;
      } catch {
        throw new Error("not valid JSON");
      }
  }
}

export function isEmpty(v: Value | undefined): boolean {
  return v === undefined || (Array.isArray(v) ? v.length === 0 : v.trim() === "");
}

/** The item's args and kwargs from the form, or the errors by parameter name. */
export function buildItem(
  plan: PlanInfo,
  values: Values,
  devices: Devices,
): { args: Json[]; kwargs: Record<string, Json> } | { errors: Record<string, string> } {
  const errors: Record<string, string> = {};
  const parsed: Record<string, Json> = {};
  for (const p of plan.parameters) {
    const raw = values[p.name];
    if (isEmpty(raw)) {
      const required =
        p.default === undefined && p.kind.name !== "VAR_POSITIONAL" && p.kind.name !== "VAR_KEYWORD";
      if (required) errors[p.name] = "required";
      continue;
    }
    try {
      parsed[p.name] = valueOf(widgetOf(p, devices), raw!);
    } catch (e) {
      errors[p.name] = (e as Error).message;
    }
  }
  if (Object.keys(errors).length) return { errors };
  const args: Json[] = [];
  const kwargs: Record<string, Json> = {};
  const varPos = plan.parameters.find((p) => p.kind.name === "VAR_POSITIONAL");
  const useArgs = varPos !== undefined && varPos.name in parsed;
  for (const p of plan.parameters) {
    if (!(p.name in parsed)) continue;
    const v = parsed[p.name];
    if (p.kind.name === "VAR_POSITIONAL") args.push(...(v as Json[]));
    else if (p.kind.name === "VAR_KEYWORD") Object.assign(kwargs, v as object);
    else if (p.kind.name === "POSITIONAL_ONLY" || (useArgs && p.kind.name === "POSITIONAL_OR_KEYWORD")) args.push(v);
    else kwargs[p.name] = v;
  }
  return { args, kwargs };
}

/** The form's values for an item's args and kwargs (editing an item, copying one). */
export function valuesOf(plan: PlanInfo, args: Json[], kwargs: Record<string, Json>, devices: Devices): Values {
  const out: Values = {};
  const show = (p: PlanParam, v: Json): Value => {
    const w = widgetOf(p, devices);
    if (w.kind === "devices" && w.multi && Array.isArray(v)) return v.map(String);
    if (typeof v === "string" && (w.kind === "text" || w.kind === "enum" || w.kind === "devices")) return v;
    if (w.kind === "list" && Array.isArray(v)) return v.map((x) => (typeof x === "string" ? x : JSON.stringify(x))).join(", ");
    return JSON.stringify(v);
  };
  let i = 0;
  for (const p of plan.parameters) {
    if (p.kind.name === "VAR_POSITIONAL") {
      if (i < args.length) out[p.name] = show(p, args.slice(i));
      i = args.length;
    } else if (p.kind.name === "VAR_KEYWORD") {
      const known = new Set(plan.parameters.map((q) => q.name));
      const extra = Object.fromEntries(Object.entries(kwargs).filter(([k]) => !known.has(k)));
      if (Object.keys(extra).length) out[p.name] = JSON.stringify(extra);
    } else if (p.kind.name !== "KEYWORD_ONLY" && i < args.length) {
      out[p.name] = show(p, args[i++]);
    } else if (p.name in kwargs) {
      out[p.name] = show(p, kwargs[p.name]);
    }
  }
  return out;
}

/** Which fields a server message names (`'num'`, "num", num=...), to show it there. */
export function fieldsNamed(plan: PlanInfo, msg: string): string[] {
  return plan.parameters
    .map((p) => p.name)
    .filter((n) => new RegExp(`['"\`]${n}['"\`]|\\b${n}\\s*=|parameter ${n}\\b`).test(msg));
}
