// The selected workspace: status numbers (polled), CPU and memory charts, and the live log pane.

import { api } from "./api.js";
import { TimeChart } from "./charts.js";
import { LogPane } from "./logs.js";
import { Sharing } from "./sharing.js";
import { $, fmtAgo, fmtBytes, fmtDuration, fmtTime, h, parseTime, pick, setText } from "./ui.js";

const POLL_MS = 3000;
const IDLE_POLL_MS = 10000;
const WINDOW_MS = 5 * 60 * 1000;

export class Details {
  constructor(app) {
    this.app = app;
    this.id = null;
    this.timer = null;
    this.generation = 0;
    this.status = null;
    this.logs = new LogPane(() => app.updateTopics());
    this.sharing = new Sharing();
    this.cpu = new TimeChart($("#cpu-chart"), {
      windowMs: WINDOW_MS,
      minMax: 5,
      format: (v) => `${v.toFixed(1)} %`,
    });
    this.mem = new TimeChart($("#mem-chart"), {
      windowMs: WINDOW_MS,
      minMax: 1024 * 1024,
      format: fmtBytes,
      color: "--accent-2",
    });
    setInterval(() => {
      if (this.id && this.status && document.visibilityState === "visible") this.renderStatus();
    }, 1000);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.id) this.poll(this.generation);
    });
  }

  /** Show workspace `id` (or nothing). */
  show(id) {
    if (id === this.id) return;
    this.id = id;
    this.generation += 1;
    clearTimeout(this.timer);
    this.status = null;
    this.cpu.reset();
    this.mem.reset();
    $("#detail-empty").hidden = !!id;
    $("#detail-body").hidden = !id;
    const ws = id ? this.app.workspaces.items.get(id) : null;
    this.logs.show(id, ws ? ws.state : null);
    this.sharing.show(id);
    if (!id) {
      setText($("#detail-name"), "");
      return;
    }
    this.renderStatus();
    this.poll(this.generation);
  }

  /** On a one-column layout (phones) Details sits under the list: bring it into view. */
  reveal() {
    if (window.matchMedia("(max-width: 1000px)").matches) {
      const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      $("#detail").scrollIntoView({ block: "start", behavior: reduce ? "auto" : "smooth" });
    }
  }

  /** After a stream reset: fetch the status and the log tail again. */
  resync() {
    if (this.id) this.poll(this.generation);
    this.logs.streamLive();
  }

  workspaceChanged(ws) {
    if (ws.id !== this.id) return;
    setText($("#detail-name"), ws.name || ws.id);
    this.logs.stateChanged(ws.state);
    this.renderStatus();
    if (ws.state === "running" && (!this.status || this.status.state !== "running")) {
      clearTimeout(this.timer);
      this.poll(this.generation);
    }
  }

  async poll(generation) {
    clearTimeout(this.timer);
    if (generation !== this.generation || !this.id) return;
    const id = this.id;
    try {
      const status = await api("GET", `/api/workspaces/${encodeURIComponent(id)}/status`, { quiet: true });
      if (generation !== this.generation) return;
      this.status = status;
      this.polledAt = Date.now();
      this.statusError = null;
      const cpu = pick(status, "cpu_percent", "cpu.percent", "resources.cpu_percent", "stats.cpu_percent");
      const used = pick(status, "memory_used_bytes", "memory.used", "memory_used", "resources.memory_used_bytes");
      const limit = pick(status, "memory_limit_bytes", "memory.limit", "memory_limit", "resources.memory_limit_bytes");
      if (cpu !== undefined) this.cpu.push(cpu);
      if (used !== undefined) {
        this.mem.setLimit(limit);
        this.mem.push(used);
      }
    } catch (err) {
      if (generation !== this.generation) return;
      this.statusError = err.status === 404 || err.status === 405 ? "status not available" : err.message;
    }
    this.renderStatus();
    const running = (this.app.workspaces.items.get(this.id) || {}).state === "running";
    const delay = running ? POLL_MS : IDLE_POLL_MS;
    if (document.visibilityState === "visible") this.timer = setTimeout(() => this.poll(generation), delay);
  }

  renderStatus() {
    const ws = this.app.workspaces.items.get(this.id) || {};
    const s = this.status || {};
    setText($("#detail-name"), ws.name || this.id || "");
    const state = ws.state || s.state; // events are fresher than the last poll
    const running = state === "running";
    const live = running && s.state === "running" ? s : {}; // numbers only from a poll of the running workspace
    const reason = ws.state_reason ?? s.reason;
    const startedAt = pick(s, "started_at") || ws.started_at;
    let uptime = pick(live, "uptime_s", "uptime_seconds", "uptime");
    if (uptime !== undefined) uptime = Number(uptime) + (Date.now() - (this.polledAt || Date.now())) / 1000;
    if (uptime === undefined && running && parseTime(startedAt)) uptime = (Date.now() - parseTime(startedAt)) / 1000;
    const cpu = pick(live, "cpu_percent", "cpu.percent", "resources.cpu_percent");
    const used = pick(live, "memory_used_bytes", "memory.used", "memory_used", "resources.memory_used_bytes");
    const limit = pick(live, "memory_limit_bytes", "memory.limit", "memory_limit", "resources.memory_limit_bytes");
    const health = pick(live, "ide_healthy", "ide_health", "ide.health");
    const container = pick(s, "container_id", "container");
    const server = pick(s, "server_name"); // a name people gave it, never the id
    const runtime = pick(s, "runtime");
    const rows = [
      ["State", [h("span", { class: `badge state-${state}` }, state || "\u2013"), reason ? ` ${reason}` : ""]],
      ["Server", [server ?? (runtime === "local" ? "this machine" : "\u2013"), runtime ? ` (${runtime})` : ""]],
      ["Container", container ? String(container).slice(0, 12) : "\u2013"],
      ["Started", startedAt ? fmtTime(startedAt) : "\u2013"],
      ["Uptime", running ? fmtDuration(uptime) : "\u2013"],
      ["CPU", cpu === undefined ? "\u2013" : `${Number(cpu).toFixed(1)} %`],
      ["Memory", used === undefined ? "\u2013" : `${fmtBytes(used)}${limit ? ` / ${fmtBytes(limit)}` : ""}`],
      ["PIDs", pick(live, "pids", "resources.pids") ?? "\u2013"],
      ["IDE", health === undefined ? "\u2013" : health === true ? "healthy" : health === false ? "not answering" : String(health)],
    ];
    const dl = $("#status-list");
    dl.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { key: k.toLowerCase() } }, v)]));
    setText($("#cpu-now"), cpu === undefined ? "" : `${Number(cpu).toFixed(1)} %`);
    setText($("#mem-now"), used === undefined ? "" : `${fmtBytes(used)}${limit ? ` of ${fmtBytes(limit)}` : ""}`);
    setText($("#why-up"), this.whyUp(live, ws, state, reason));
  }

  whyUp(s, ws, state, reason) {
    if (state === "failed") return reason ? `Failed: ${reason}` : "Failed.";
    if (state !== "running") return "";
    if (this.statusError && !this.status) return this.statusError;
    if (s.runtime_error) return `The runtime did not answer: ${s.runtime_error}`;
    const source = pick(s, "last_activity_source") ?? ws.last_activity_source;
    const at = pick(s, "last_activity_at") ?? ws.last_activity_at;
    const stopAt = pick(s, "idle_stop_at");
    const parts = [];
    if (source || at) parts.push(`Still up: last activity${source ? ` (${source})` : ""}${at ? ` ${fmtAgo(at)}` : ""}.`);
    else parts.push("Still up: no activity recorded since it started.");
    if (stopAt) parts.push(`Idle stop ${fmtAgo(stopAt)} unless used.`);
    else if (s.idle_timeout_s === null && this.status) parts.push("Idle stop is off.");
    return parts.join(" ");
  }
}
