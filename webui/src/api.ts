// Requests to the gateway's public API, with the credentials the user gave.

export type Auth =
  | { kind: "none" }
  | { kind: "key"; key: string }
  | { kind: "token"; token: string; refresh: string; user: string; expires: number };

const STORE = "qserverAuth";

export function loadAuth(): Auth {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) ?? "null") as Auth | null;
    if (saved && (saved.kind === "key" || saved.kind === "token")) return saved;
  } catch {
    // an unreadable entry is as good as none
  }
  return { kind: "none" };
}

export function saveAuth(auth: Auth): void {
  if (auth.kind === "none") localStorage.removeItem(STORE);
  else localStorage.setItem(STORE, JSON.stringify(auth));
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** A reply the server refused (`success: false`) or an HTTP error, as one message. */
function problemOf(status: number, reply: unknown): string | null {
  if (reply && typeof reply === "object") {
    const r = reply as { success?: boolean; msg?: string; detail?: unknown };
    if (status >= 400) return typeof r.detail === "string" ? r.detail : `HTTP ${status}`;
    if (r.success === false) return r.msg || "refused";
  } else if (status >= 400) {
    return `HTTP ${status}`;
  }
  return null;
}

// Routes that take the lock's key themselves, or none at all (their requests refuse
// unknown fields: a lock does not stop a dry run, an edit or a rejection of a proposal).
const NO_LOCK_KEY = /^\/api\/(lock|unlock|auth\/|item\/dry_run|proposals\/(get|update|reject))/;

export class Api {
  /** The key of the lock, typed by the user: sent with every change while it is set. */
  lockKey = "";

  constructor(public auth: Auth) {}

  /**
   * A login's access token is short-lived (15 min by default): a new one is asked for with
   * the refresh token before it expires, in place, so open streams and views carry on
   * (a stream that reconnects takes the new token). False when the session is over.
   */
  async refresh(): Promise<boolean> {
    const a = this.auth;
    if (a.kind !== "token" || !a.refresh) return false;
    const r = await fetch("/api/auth/session/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: a.refresh }),
    }).catch(() => null);
    if (!r) return true; // the gateway is away: try again later
    if (!r.ok) return false;
    const t = (await r.json()) as { access_token: string; refresh_token?: string; expires_in: number };
    this.auth = { ...a, token: t.access_token, refresh: t.refresh_token ?? a.refresh, expires: Date.now() / 1000 + t.expires_in };
    saveAuth(this.auth);
    return true;
  }

  headers(): Record<string, string> {
    const h: Record<string, string> = {};
    if (this.auth.kind === "key") h["Authorization"] = `ApiKey ${this.auth.key}`;
    if (this.auth.kind === "token") h["Authorization"] = `Bearer ${this.auth.token}`;
    return h;
  }

  async call<T>(method: "GET" | "POST", path: string, body?: object): Promise<T> {
    const init: RequestInit = { method, headers: { ...this.headers() } };
    if (method === "POST") {
      (init.headers as Record<string, string>)["Content-Type"] = "application/json";
      init.body = JSON.stringify(body ?? {});
    }
    const r = await fetch(path, init);
    let reply: unknown = null;
    try {
      reply = await r.json();
    } catch {
      reply = null;
    }
    const problem = problemOf(r.status, reply);
    if (problem !== null) throw new ApiError(problem, r.status);
    return reply as T;
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>("GET", path);
  }

  post<T>(path: string, body?: object): Promise<T> {
    const withKey = this.lockKey && !NO_LOCK_KEY.test(path) ? { lock_key: this.lockKey, ...body } : body;
    return this.call<T>("POST", path, withKey);
  }

  async upload<T>(path: string, file: File): Promise<T> {
    const form = new FormData();
    form.append("spreadsheet", file);
    const r = await fetch(path, { method: "POST", headers: this.headers(), body: form });
    const reply: unknown = await r.json().catch(() => null);
    const problem = problemOf(r.status, reply);
    if (problem !== null) throw new ApiError(problem, r.status);
    return reply as T;
  }

  /** The URL of a WebSocket route; browsers cannot set its headers, so credentials go in the query. */
  wsUrl(path: string, params: Record<string, string> = {}): string {
    const q = new URLSearchParams(params);
    if (this.auth.kind === "key") q.set("api_key", this.auth.key);
    if (this.auth.kind === "token") q.set("access_token", this.auth.token);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const qs = q.toString();
    return `${proto}//${location.host}${path}${qs ? "?" + qs : ""}`;
  }
}
