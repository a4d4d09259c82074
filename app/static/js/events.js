// ONE EventSource for the whole page, carrying every topic the page needs (browsers allow six
// HTTP/1.1 connections per origin). Changing the topic set reconnects with the last seen id, so
// nothing published in between is lost; ids already seen are dropped (they grow across all topics).

export const EVENT_TYPES = [
  "workspace.created", "workspace.updated", "workspace.starting", "workspace.running", "workspace.stopping",
  "workspace.stopped", "workspace.failed", "workspace.deleted", "workspace.placed", "workspace.restarting",
  "workspace.stop_pending", "workspace.idle", "workspace.cloned", "workspace.progress", "clone.progress", "clone.done", "clone.failed", "pull.progress",
  "start.progress", "log.line", "stream.reset", "message",
];

const MAX_BACKOFF_MS = 15000;

function newer(id, last) {
  if (!id || !last || !/^\d+$/.test(id) || !/^\d+$/.test(last)) return true;
  return BigInt(id) > BigInt(last);
}

export class EventStream {
  /**
   * @param {(event: {id, topic, type, at, data}) => void} onEvent
   * @param {(state: "connecting"|"live"|"down"|"unavailable", detail?: string) => void} onState
   */
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.topics = [];
    this.lastId = null;
    this.source = null;
    this.backoff = 1000;
    this.timer = null;
    this.stopped = true;
  }

  /** Subscribe to exactly these topics (reconnects only when the set changes). */
  setTopics(topics) {
    const next = [...new Set(topics)].sort();
    if (!this.stopped && next.join("\n") === this.topics.join("\n")) return;
    this.topics = next;
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.topics = [];
    this.lastId = null;
    this.onState("down");
  }

  url() {
    const params = new URLSearchParams();
    for (const t of this.topics) params.append("topic", t);
    if (this.lastId) params.set("last_event_id", this.lastId);
    return `/api/events?${params}`;
  }

  connect() {
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    if (!this.topics.length || this.stopped) return;
    const source = new EventSource(this.url(), { withCredentials: true });
    this.source = source;
    this.onState("connecting");
    const handler = (message) => this.dispatch(message);
    for (const type of EVENT_TYPES) source.addEventListener(type, handler);
    source.onopen = () => {
      if (this.source !== source) return;
      this.backoff = 1000;
      this.onState("live");
    };
    source.onerror = () => {
      if (this.source !== source) return;
      if (source.readyState === EventSource.CLOSED) this.recover(source);
      else this.onState("connecting");
    };
  }

  /** The browser gave up (non-200 answer): find out why, then retry with backoff. */
  async recover(source) {
    source.close();
    let status = 0;
    let detail = "";
    const abort = new AbortController();
    try {
      const r = await fetch(this.url(), { credentials: "same-origin", signal: abort.signal });
      status = r.status;
      if (!r.ok) {
        try {
          detail = (await r.json()).detail || "";
        } catch {
          detail = "";
        }
      }
    } catch {
      status = 0;
    } finally {
      abort.abort();
    }
    if (this.source !== source || this.stopped) return;
    if (status === 404 || status === 405) {
      this.onState("unavailable", "live events are not available on this hub");
      this.backoff = 30000;
    } else if (status === 401) {
      this.onState("down", detail || "not signed in");
    } else {
      this.onState("down", detail || (status ? `event stream answered ${status}` : "event stream unreachable"));
    }
    if (status === 401) return; // the page's 401 handler shows the login form
    this.timer = setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
  }

  dispatch(message) {
    let payload = null;
    try {
      payload = message.data ? JSON.parse(message.data) : {};
    } catch {
      payload = { text: message.data };
    }
    const full = payload && typeof payload === "object" && "type" in payload && "data" in payload;
    const event = full
      ? payload
      : { id: message.lastEventId, topic: null, type: message.type, at: null, data: payload || {} };
    event.id = event.id || message.lastEventId || null;
    event.type = event.type || message.type;
    if (event.type !== "stream.reset") {
      if (!newer(event.id, this.lastId)) return;
      if (event.id) this.lastId = event.id;
    } else {
      // The hub lost our place (history trimmed, or a restarted in-process hub counting from 1 again):
      // accept whatever ids come next instead of dropping them as already seen.
      this.lastId = event.id || null;
    }
    this.onEvent(event);
  }
}
