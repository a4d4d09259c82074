// The log pane of the selected workspace. While it runs: one EventSource on
// GET /api/workspaces/{id}/logs?follow=true&tail=200 (the tail, then new lines, then `end` when it
// stops). Otherwise: the last lines from GET …/logs?tail=200. Lines are de-duplicated by (time, text),
// so a reconnect that replays the tail does not repeat them.

import { api } from "./api.js";
import { $, h, parseTime, setText } from "./ui.js";

const TAIL = 200;
const MAX_LINES = 2000;

function linesOf(data) {
  if (!data) return [];
  if (Array.isArray(data)) return data;
  if (Array.isArray(data.lines)) return data.lines;
  return [data];
}

function normalize(line) {
  if (typeof line === "string") return { at: null, text: line };
  return { at: line.at || line.time || null, text: String(line.text ?? line.line ?? line.message ?? "") };
}

export class LogPane {
  constructor() {
    this.pane = $("#logs");
    this.id = null;
    this.source = null;
    this.keys = new Set();
    this.generation = 0;
    $("#log-clear").addEventListener("click", () => this.clear());
  }

  clear() {
    this.pane.replaceChildren();
    this.keys.clear();
  }

  mode(text) {
    setText($("#log-mode"), text);
  }

  /** Show the logs of workspace `id` in state `state` (null: nothing). */
  show(id, state) {
    this.close();
    this.id = id;
    this.generation += 1;
    this.clear();
    this.mode("");
    if (!id) return;
    if (state === "running") this.follow();
    else this.loadTail();
  }

  /** The selected workspace changed state: start following once it runs. */
  stateChanged(state) {
    if (this.id && state === "running" && !this.source) this.follow();
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
  }

  follow() {
    this.close();
    const id = this.id;
    const generation = this.generation;
    const url = `/api/workspaces/${encodeURIComponent(id)}/logs?follow=true&tail=${TAIL}`;
    const source = new EventSource(url, { withCredentials: true });
    this.source = source;
    this.mode("connecting…");
    const current = () => this.source === source && this.generation === generation;
    const onLine = (message) => {
      if (!current()) return;
      try {
        for (const line of linesOf(JSON.parse(message.data))) this.append(line);
      } catch {
        this.append(message.data);
      }
    };
    source.addEventListener("log", onLine);
    source.addEventListener("log.line", onLine);
    source.addEventListener("end", () => {
      if (!current()) return;
      this.close();
      this.mode("ended: the workspace stopped");
    });
    source.onopen = () => current() && this.mode("following");
    source.onerror = () => {
      if (!current()) return;
      if (source.readyState !== EventSource.CLOSED) {
        this.mode("reconnecting…");
        return;
      }
      this.close();
      this.loadTail(); // not running (409) or gone: show what is left, and why
    };
  }

  async loadTail() {
    const id = this.id;
    const generation = this.generation;
    try {
      const data = await api("GET", `/api/workspaces/${encodeURIComponent(id)}/logs`, {
        query: { tail: TAIL },
        quiet: true,
      });
      if (generation !== this.generation) return;
      const lines = linesOf(data);
      for (const line of lines) this.append(line);
      this.mode(lines.length ? "last lines" : "no output yet");
    } catch (err) {
      if (generation !== this.generation) return;
      this.mode(err.status === 404 || err.status === 405 ? "logs not available" : err.message);
    }
  }

  /** A `log.line` event from the page's event stream (if the hub publishes them). */
  handleEvent(ev) {
    const data = ev.data || {};
    const topic = ev.topic || "";
    const id = data.workspace_id || (topic.endsWith(":logs") ? topic.split(":")[1] : null);
    if (id && id === this.id) for (const line of linesOf(data.lines || data)) this.append(line);
  }

  append(raw) {
    const { at, text } = normalize(raw);
    if (at) {
      const key = `${at}\u0000${text}`;
      if (this.keys.has(key)) return;
      this.keys.add(key);
      if (this.keys.size > MAX_LINES * 2) this.keys = new Set([...this.keys].slice(-MAX_LINES));
    }
    const pane = this.pane;
    const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 30;
    const time = parseTime(at);
    pane.append(
      h("span", { class: "line" }, time ? h("time", { datetime: at }, new Date(time).toLocaleTimeString()) : null, text, "\n"),
    );
    while (pane.childElementCount > MAX_LINES) pane.firstElementChild.remove();
    if ($("#log-autoscroll").checked && (atBottom || pane.childElementCount < 5)) pane.scrollTop = pane.scrollHeight;
  }
}
