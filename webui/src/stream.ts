// A WebSocket that reconnects: everything the page shows comes pushed through these.

export type StreamState = "connecting" | "open" | "closed" | "denied" | "missing";

export interface StreamHandle {
  close(): void;
}

// Close codes of the gateway (services/gateway/app.py): a bad key, a missing scope.
const DENIED = new Set([4001, 4003]);

/**
 * Open `url()` and hand each JSON message to `onMessage`; reconnect after a loss, waiting
 * longer each time (0.5 s doubling to 10 s). A route that never opens (an older gateway
 * without it: the upgrade is refused) is reported as "missing" and tried again every 30 s.
 */
export function openStream(
  url: () => string,
  onMessage: (data: unknown) => void,
  onState: (s: StreamState, why?: string) => void,
): StreamHandle {
  let ws: WebSocket | null = null;
  let stopped = false;
  let delay = 500;
  let timer: number | undefined;
  let neverOpened = 0;

  const connect = () => {
    if (stopped) return;
    onState("connecting");
    let opened = false;
    ws = new WebSocket(url());
    ws.onopen = () => {
      opened = true;
      neverOpened = 0;
      delay = 500;
      onState("open");
    };
    ws.onmessage = (e: MessageEvent) => {
      let data: unknown;
      try {
        data = JSON.parse(e.data as string);
      } catch {
        return;
      }
      onMessage(data);
    };
    ws.onclose = (e: CloseEvent) => {
      ws = null;
      if (stopped) return;
      if (DENIED.has(e.code)) {
        onState("denied", e.reason);
        return; // new credentials open a new stream
      }
      let wait = delay;
      delay = Math.min(delay * 2, 10_000);
      if (!opened && ++neverOpened >= 3) {
        onState("missing", "not offered by this gateway");
        wait = 30_000;
      } else {
        onState("closed", e.reason);
      }
      timer = window.setTimeout(connect, wait);
    };
  };
  connect();
  return {
    close() {
      stopped = true;
      window.clearTimeout(timer);
      ws?.close();
    },
  };
}
