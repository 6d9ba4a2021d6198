// msgxc's browser client: the caller's inbox over HTTP and its live changes over a WebSocket
// (`/connect`) or Server-Sent Events (`/stream`), with reconnects that neither miss nor repeat
// an entry. No runtime dependencies: `fetch`, `WebSocket` and `EventSource` of the browser.
//
// Layout:
// - `MsgxcClient`: the inbox calls, preferences, acks, and the live connection
// - `webpush.ts`: the Web Push helper (VAPID key, service worker, subscription, enlistment)

export { enableWebPush, enlistWebPush, urlBase64ToUint8Array, WebPushError } from "./webpush.js";
export type { WebPushOptions, PushSubscriptionLike, WebPushStage } from "./webpush.js";

/** One inbox entry (a notification), as `GET /api/v1/notifications` lists it. */
export interface InboxEntry {
  id: string;
  uid: string;
  tid: string | null;
  sender: string;
  msg: string;
  type: string | null;
  level: number;
  title: string | null;
  data: Record<string, unknown> | null;
  opts: Record<string, unknown>;
  status: "unread" | "read" | "archived";
  created_at: string;
  read_at: string | null;
  archived_at: string | null;
  experiment?: string;
  variant?: string;
}

/** A page of the inbox. */
export interface InboxPage {
  count: number;
  unread: number;
  next: string | null;
  previous: string | null;
  /** Where a later `sync` continues from. */
  cursor: string;
  results: InboxEntry[];
}

/** Inbox filters and paging of `list`. */
export interface ListParams {
  status?: "unread" | "read" | "archived" | "all";
  type?: string;
  sender?: string;
  level?: 0 | 50;
  thread?: string;
  since?: string;
  before?: string;
  limit?: number;
  offset?: number;
}

/** A change to an entry that already arrived. */
export interface Change {
  action: "read" | "archived" | "deleted";
  notification: InboxEntry;
}

export type ConnectionState = "connecting" | "open" | "closed";

export interface ClientOptions {
  /** The exchange's base URL, e.g. `https://push.example.com` (the API is under `/api/v1`). */
  baseUrl: string;
  /** The user's JWT, or a function that returns a current one (called on every request and
   * reconnect, so a refreshed token is picked up). */
  token: string | (() => string | Promise<string>);
  /** `websocket` (default) or `sse`. */
  transport?: "websocket" | "sse";
  /** First reconnect delay in ms (doubled per failed attempt, with jitter). Default 500. */
  backoffMs?: number;
  /** Longest reconnect delay in ms. Default 30,000. */
  maxBackoffMs?: number;
  /** Where to resume from: the `cursor` of an inbox page the app already shows. Without it,
   * `connect` starts from the inbox as it is at that moment. */
  cursor?: string;
  /** Entry ids remembered for de-duplication. Default 5,000. */
  remember?: number;
}

type Events = {
  /** A new entry, once per id however it arrived (live frame or resync). */
  notification: InboxEntry;
  /** An entry was read, archived or deleted (on any device). */
  change: Change;
  /** The unread count the server reported on connecting. */
  unread: number;
  state: ConnectionState;
  /** A failure worth showing (the client keeps reconnecting). */
  error: Error;
};

/** An error answer of the API: `{"error":{"code","message","field"?}}` and its status. */
export class MsgxcError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = "MsgxcError";
  }
}

/** Resync pages after a reconnect. */
const SYNC_PAGE = 100;

export class MsgxcClient {
  private readonly base: string;
  private readonly options: ClientOptions;
  private readonly listeners: { [K in keyof Events]?: Set<(v: Events[K]) => void> } = {};
  private readonly seen = new Set<string>();
  private cursor: string | undefined;
  private ws: WebSocket | null = null;
  private es: EventSource | null = null;
  /** The last SSE event id, for `last_event_id` when the client opens the stream anew. */
  private lastEventId: string | undefined;
  private attempts = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private wanted = false;
  private current: ConnectionState = "closed";

  constructor(options: ClientOptions) {
    this.options = options;
    this.base = options.baseUrl.replace(/\/+$/, "") + "/api/v1";
    this.cursor = options.cursor;
  }

  /** Listens to an event; returns the function that stops listening. */
  on<K extends keyof Events>(event: K, listener: (v: Events[K]) => void): () => void {
    let set = this.listeners[event] as Set<(v: Events[K]) => void> | undefined;
    if (!set) {
      set = new Set();
      (this.listeners as Record<string, unknown>)[event] = set;
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.listeners[event] as Set<(v: Events[K]) => void> | undefined;
    set?.forEach((l) => {
      try {
        l(value);
      } catch (e) {
        // A listener's failure is the app's; the client carries on.
        console.error(e);
      }
    });
  }

  get state(): ConnectionState {
    return this.current;
  }

  private setState(s: ConnectionState): void {
    if (this.current !== s) {
      this.current = s;
      this.emit("state", s);
    }
  }

  private async token(): Promise<string> {
    const t = this.options.token;
    return typeof t === "function" ? await t() : t;
  }

  /** One API call; throws `MsgxcError` for an error answer. */
  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = { Authorization: `Bearer ${await this.token()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    const value = text ? JSON.parse(text) : null;
    if (!resp.ok) {
      const e = value?.error ?? {};
      throw new MsgxcError(resp.status, e.code ?? "http_" + resp.status, e.message ?? resp.statusText, e.field);
    }
    return value as T;
  }

  // --- The inbox -------------------------------------------------------------------------

  /** A page of the inbox, newest first. */
  async list(params: ListParams = {}): Promise<InboxPage> {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
    const page = await this.request<InboxPage>("GET", "/notifications" + (q.size ? "?" + q : ""));
    for (const n of page.results) this.remember(n.id);
    return page;
  }

  /** Marks entries read; answers the ids this call changed. */
  async read(ids: string[]): Promise<string[]> {
    return (await this.request<{ read: string[] }>("PATCH", "/notifications", { ids })).read;
  }

  async archive(id: string): Promise<InboxEntry> {
    return this.request("POST", `/notifications/${encodeURIComponent(id)}/archive`);
  }

  async remove(id: string): Promise<void> {
    await this.request("DELETE", `/notifications/${encodeURIComponent(id)}`);
  }

  /** Reads everything unread so far (of one type or thread, if given); answers the unread count. */
  async readAll(filter: { type?: string; thread?: string } = {}): Promise<number> {
    return (await this.request<{ unread: number }>("POST", "/notifications/read-all", filter)).unread;
  }

  async stats(): Promise<Record<string, unknown>> {
    return this.request("GET", "/notifications/stats");
  }

  async preferences(): Promise<Record<string, unknown>> {
    return this.request("GET", "/preferences");
  }

  async setPreferences(preferences: Record<string, unknown>): Promise<Record<string, unknown>> {
    return this.request("PUT", "/preferences", preferences);
  }

  /** A receipt for a message the app showed (`delivered`) or the user opened (`opened`). */
  async ack(mid: string, status: "delivered" | "opened" = "delivered"): Promise<void> {
    await this.request("POST", "/ack", { mid, status });
  }

  // --- Live ------------------------------------------------------------------------------

  /** Opens the live connection and keeps it open (reconnecting with backoff) until `close`. */
  async connect(): Promise<void> {
    this.wanted = true;
    if (this.cursor === undefined) {
      // Start from the inbox as it is now: what arrives later comes live or by resync.
      this.cursor = (await this.list({ limit: 1 })).cursor;
    }
    this.open();
  }

  /** Closes the live connection for good. */
  close(): void {
    this.wanted = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.detach();
    this.setState("closed");
  }

  /** Drops the live connection and opens it again now (after a token change, say). */
  reconnect(): void {
    this.detach();
    if (this.wanted) this.open();
  }

  private detach(): void {
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
    this.es?.close();
    this.es = null;
  }

  private open(): void {
    this.setState("connecting");
    void this.token().then(
      (token) => {
        if (!this.wanted) return;
        if (this.options.transport === "sse") this.openSse(token);
        else this.openWs(token);
      },
      (e) => this.failed(e),
    );
  }

  private failed(e: unknown): void {
    this.emit("error", e instanceof Error ? e : new Error(String(e)));
    this.retry();
  }

  /** Schedules the next attempt: exponential backoff with full jitter. */
  private retry(): void {
    this.detach();
    if (!this.wanted || this.timer) return;
    this.setState("connecting");
    const first = this.options.backoffMs ?? 500;
    const max = this.options.maxBackoffMs ?? 30_000;
    const delay = Math.min(max, first * 2 ** this.attempts) * (0.5 + Math.random() / 2);
    this.attempts += 1;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.open();
    }, delay);
  }

  private openWs(token: string): void {
    const url = this.base.replace(/^http/, "ws") + "/connect?token=" + encodeURIComponent(token);
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (m) => {
      let frame: { action?: string; unread?: number; notification?: InboxEntry };
      try {
        frame = JSON.parse(String(m.data));
      } catch {
        return;
      }
      if (frame.action === "hello") {
        this.attempts = 0;
        this.setState("open");
        if (typeof frame.unread === "number") this.emit("unread", frame.unread);
        // Whatever arrived while we were away: the entries after our cursor.
        void this.sync().catch((e) => this.emit("error", e));
        return;
      }
      this.frame(frame.action, frame.notification);
    };
    ws.onclose = () => {
      if (this.ws === ws) this.retry();
    };
  }

  private openSse(token: string): void {
    const q = new URLSearchParams({ token });
    // EventSource resumes by itself after a network error; a stream opened anew says where
    // to continue with `last_event_id` (it cannot set the header).
    if (this.lastEventId) q.set("last_event_id", this.lastEventId);
    const es = new EventSource(this.base + "/stream?" + q);
    this.es = es;
    es.onopen = () => {
      this.attempts = 0;
      this.setState("open");
      // A first stream has no event id to resume from: catch up from the cursor once.
      if (!this.lastEventId) void this.sync().catch((e) => this.emit("error", e));
    };
    const on = (m: MessageEvent) => {
      if (m.lastEventId) this.lastEventId = m.lastEventId;
      let frame: { action?: string; notification?: InboxEntry };
      try {
        frame = JSON.parse(String(m.data));
      } catch {
        return;
      }
      this.frame(frame.action, frame.notification);
    };
    for (const action of ["new", "read", "archived", "deleted"]) es.addEventListener(action, on);
    es.onerror = () => {
      // CLOSED: the browser gave up (an error answer); otherwise it is retrying by itself.
      if (es.readyState === EventSource.CLOSED && this.es === es) this.retry();
      else this.setState("connecting");
    };
  }

  private frame(action: string | undefined, n: InboxEntry | undefined): void {
    if (!n) return;
    if (action === "new") {
      if (this.remember(n.id)) this.emit("notification", n);
    } else if (action === "read" || action === "archived" || action === "deleted") {
      this.emit("change", { action, notification: n });
    }
  }

  /** Fetches the entries after the cursor (oldest first) and emits those not yet seen. */
  async sync(): Promise<void> {
    for (;;) {
      const cursor = this.cursor;
      if (cursor === undefined) return;
      const q = new URLSearchParams({ cursor, limit: String(SYNC_PAGE), status: "all" });
      const page: InboxPage = await this.request<InboxPage>("GET", "/notifications?" + q);
      for (const n of page.results) if (this.remember(n.id)) this.emit("notification", n);
      this.cursor = page.cursor;
      if (page.results.length < SYNC_PAGE) return;
    }
  }

  /** Records an id; `false` when it was seen already. */
  private remember(id: string): boolean {
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    const max = this.options.remember ?? 5_000;
    if (this.seen.size > max) {
      // Sets iterate in insertion order: forget the oldest.
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    return true;
  }
}
