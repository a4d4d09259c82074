// The selected workspace: status numbers (polled), CPU and memory charts, and the live log pane.

import { api } from "./api.js";
import { TimeChart } from "./charts.js";
import { $, fmtAgo, fmtBytes, fmtDuration, fmtTime, h, parseTime, pick, setText } from "./ui.js";

const POLL_MS = 3000;
const WINDOW_MS = 5 * 60 * 1000;
const MAX_LOG_LINES = 2000;

function logLines(data) {
  if (!data) return [];
  if (Array.isArray(data)) return data;
  if (Array.isArray(data.lines)) return data.lines;
  if (Array.isArray(data.items)) return data.items;
  return [data];
}

function lineText(line) {
  if (typeof line === "string") return { at: null, text: line };
  return { at: line.at || line.time || line.timestamp || null, text: line.text ?? line.line ?? line.message ?? "" };
}

export class Details {
  constructor(app) {
    this.app = app;
    this.id = null;
    this.timer = null;
    this.generation = 0;
    this.status = null;
    this.logKeys = new Set();
    this.pendingLive = null; // live lines that arrived while the tail was loading
    this.cpu = new TimeChart($("#cpu-chart"), { windowMs: WINDOW_MS, fixedMax: null, format: (v) => `${v.toFixed(1)} %` });
    this.mem = new TimeChart($("#mem-chart"), { windowMs: WINDOW_MS, format: fmtBytes, color: "--accent-2" });
    $("#log-clear").addEventListener("click", () => {
      $("#logs").replaceChildren();
      this.logKeys.clear();
    });
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
    $("#logs").replaceChildren();
    this.logKeys.clear();
    $("#detail-empty").hidden = !!id;
    $("#detail-body").hidden = !id;
    if (!id) {
      setText($("#detail-name"), "");
      return;
    }
    this.renderStatus();
    this.poll(this.generation);
    this.loadTail(this.generation);
  }

  workspaceChanged(ws) {
    if (ws.id !== this.id) return;
    setText($("#detail-name"), ws.name || ws.id);
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
    if (document.visibilityState === "visible") this.timer = setTimeout(() => this.poll(generation), POLL_MS);
  }

  renderStatus() {
    const ws = this.app.workspaces.items.get(this.id) || {};
    const s = this.status || {};
    setText($("#detail-name"), ws.name || this.id || "");
    const state = s.state || ws.state;
    const startedAt = pick(s, "started_at") || ws.started_at;
    let uptime = pick(s, "uptime_s", "uptime_seconds", "uptime");
    if (uptime === undefined && state === "running" && parseTime(startedAt)) {
      uptime = (Date.now() - parseTime(startedAt)) / 1000;
    }
    const cpu = pick(s, "cpu_percent", "cpu.percent", "resources.cpu_percent", "stats.cpu_percent");
    const used = pick(s, "memory_used_bytes", "memory.used", "memory_used", "resources.memory_used_bytes");
    const limit = pick(s, "memory_limit_bytes", "memory.limit", "memory_limit", "resources.memory_limit_bytes");
    const health = pick(s, "ide_health", "ide.health", "ide_healthy", "health");
    const container = pick(s, "container_id", "container");
    const rows = [
      ["State", [h("span", { class: `badge state-${state}` }, state || "–"), s.reason || ws.state_reason ? ` ${s.reason || ws.state_reason}` : ""]],
      ["Server", pick(s, "server_name", "server.name", "server_id", "server") ?? ws.server_id ?? "–"],
      ["Container", container ? String(container).slice(0, 12) : "–"],
      ["Started", startedAt ? fmtTime(startedAt) : "–"],
      ["Uptime", state === "running" || uptime ? fmtDuration(uptime) : "–"],
      ["CPU", cpu === undefined ? "–" : `${Number(cpu).toFixed(1)} %`],
      ["Memory", used === undefined ? "–" : `${fmtBytes(used)}${limit ? ` / ${fmtBytes(limit)}` : ""}`],
      ["PIDs", pick(s, "pids", "resources.pids") ?? "–"],
      ["IDE", health === undefined ? "–" : health === true ? "healthy" : health === false ? "unhealthy" : String(health)],
    ];
    const dl = $("#status-list");
    dl.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { key: k.toLowerCase() } }, v)]));
    setText($("#cpu-now"), cpu === undefined ? "" : `${Number(cpu).toFixed(1)} %`);
    setText($("#mem-now"), used === undefined ? "" : fmtBytes(used));
    setText($("#why-up"), this.whyUp(s, ws, state));
  }

  whyUp(s, ws, state) {
    if (this.statusError && !this.status && state === "running") return this.statusError;
    const source = pick(s, "last_activity_source", "last_activity.source", "activity.source") ?? ws.last_activity_source;
    const at = pick(s, "last_activity_at", "last_activity.at", "activity.at") ?? ws.last_activity_at;
    const stopAt = pick(s, "idle_stop_at", "stop_at", "idle_deadline");
    if (state !== "running") return state === "failed" && (s.reason || ws.state_reason) ? `Failed: ${s.reason || ws.state_reason}` : "";
    const parts = [];
    if (source || at) parts.push(`Still up: last activity ${source ? `from ${source}` : ""} ${at ? fmtAgo(at) : ""}.`);
    else parts.push("Still up: no activity recorded since start.");
    if (stopAt) parts.push(`Idle stop ${fmtAgo(stopAt)}.`);
    return parts.join(" ").replace(/\s+/g, " ");
  }

  async loadTail(generation) {
    const id = this.id;
    this.pendingLive = [];
    setText($("#log-mode"), "loading…");
    try {
      const data = await api("GET", `/api/workspaces/${encodeURIComponent(id)}/logs`, { query: { tail: 200 }, quiet: true });
      if (generation !== this.generation) return;
      for (const line of logLines(data)) this.appendLine(line);
      setText($("#log-mode"), this.app.liveState === "live" ? "following" : "tail");
    } catch (err) {
      if (generation !== this.generation) return;
      const why = err.status === 404 || err.status === 405 ? "logs not available" : err.message;
      setText($("#log-mode"), why);
    } finally {
      if (generation === this.generation) {
        const pending = this.pendingLive || [];
        this.pendingLive = null;
        for (const line of pending) this.appendLine(line);
      }
    }
  }

  /** A log.line event from the page's event stream. */
  handleLogEvent(ev) {
    const data = ev.data || {};
    const topic = ev.topic || "";
    const id = data.workspace_id || (topic.endsWith(":logs") ? topic.split(":")[1] : null);
    if (!id || id !== this.id) return;
    for (const line of logLines(data.lines ? data.lines : data)) {
      if (this.pendingLive) this.pendingLive.push(line);
      else this.appendLine(line);
    }
  }

  /** Refetch after a stream reset (events may have been missed). */
  resync() {
    if (!this.id) return;
    $("#logs").replaceChildren();
    this.logKeys.clear();
    this.loadTail(this.generation);
  }

  appendLine(raw) {
    const { at, text } = lineText(raw);
    const key = `${at}\u0000${text}`;
    if (at && this.logKeys.has(key)) return;
    if (at) this.logKeys.add(key);
    const pane = $("#logs");
    const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 30;
    const time = parseTime(at);
    pane.append(
      h(
        "span",
        { class: "line" },
        time ? h("time", { datetime: at }, new Date(time).toLocaleTimeString()) : null,
        text,
        "\n",
      ),
    );
    while (pane.childElementCount > MAX_LOG_LINES) pane.firstElementChild.remove();
    if (this.logKeys.size > MAX_LOG_LINES * 2) this.logKeys.clear();
    if ($("#log-autoscroll").checked && (atBottom || pane.childElementCount < 5)) pane.scrollTop = pane.scrollHeight;
  }
}
