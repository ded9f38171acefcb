// Credentials: an API key, or a login with one of the gateway's password providers.
import { useEffect, useState } from "preact/hooks";
import type { Auth } from "../api";

interface Provider {
  provider: string;
  mode: string;
  links: { auth_endpoint: string };
}

export function Login(props: { auth: Auth; who: string; onLogin: (a: Auth) => void }) {
  const [providers, setProviders] = useState<Provider[]>([]);
  const [key, setKey] = useState(props.auth.kind === "key" ? props.auth.key : "");
  const [user, setUser] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  useEffect(() => {
    fetch("/api/auth/providers")
      .then((r) => (r.ok ? r.json() : { providers: [] }))
      .then((r: { providers?: Provider[] }) => setProviders((r.providers ?? []).filter((p) => p.mode === "password")))
      .catch(() => setProviders([]));
  }, []);

  const passwordLogin = async (e: Event) => {
    e.preventDefault();
    const p = providers[0];
    if (!p) return;
    const body = new URLSearchParams({ username: user, password });
    const r = await fetch(p.links.auth_endpoint, { method: "POST", body });
    const reply = (await r.json().catch(() => ({}))) as {
      access_token?: string;
      refresh_token?: string;
      expires_in?: number;
      detail?: string;
    };
    if (!r.ok || !reply.access_token) {
      setError(reply.detail ?? `HTTP ${r.status}`);
      return;
    }
    setError("");
    setPassword("");
    const expires = Date.now() / 1000 + (reply.expires_in ?? 900);
    props.onLogin({ kind: "token", token: reply.access_token, refresh: reply.refresh_token ?? "", user, expires });
  };

  return (
    <div class="login">
      {props.who && (
        <span class="who" data-testid="who">
          {props.who}
        </span>
      )}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          props.onLogin(key ? { kind: "key", key } : { kind: "none" });
        }}
      >
        <label>
          API key{" "}
          <input type="password" value={key} size={14} autocomplete="off" onInput={(e) => setKey(e.currentTarget.value)} />
        </label>
        <button type="submit">Use key</button>
      </form>
      {providers.length > 0 && (
        <form onSubmit={passwordLogin}>
          <label>
            User <input value={user} size={8} autocomplete="username" onInput={(e) => setUser(e.currentTarget.value)} />
          </label>
          <label>
            Password{" "}
            <input
              type="password"
              value={password}
              size={8}
              autocomplete="current-password"
              onInput={(e) => setPassword(e.currentTarget.value)}
            />
          </label>
          <button type="submit">Log in</button>
        </form>
      )}
      {props.auth.kind !== "none" && (
        <button type="button" onClick={() => props.onLogin({ kind: "none" })}>
          Log out
        </button>
      )}
      {error && <span class="bad">{error}</span>}
    </div>
  );
}
