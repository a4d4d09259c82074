// The log pane of the selected workspace. First the last lines (GET /api/workspaces/{id}/logs?tail=200),
// then new lines as `log.line` events of topic `workspace:<id>:logs` on the page's ONE event stream: the
// pane asks the page to add that topic once the tail is in, and the stream reconnects with its last event
// id, so lines published in between are replayed. Each time the stream (re)opens the tail is fetched again
// (a reconnect without a cursor would otherwise leave a gap). Lines are de-duplicated by (time, text), so
// the tail and the events may overlap freely.

import { api } from "./api.js";
import { $, h, parseTime, setText } from "./ui.js";

const TAIL = 200;
const MAX_LINES = 2000;
const ENDED = new Set(["stopped", "failed", "deleted"]);

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
  /** @param {() => void} onTopicChange called when `topic()` changes (the page updates its stream) */
  constructor(onTopicChange = () => {}) {
    this.pane = $("#logs");
    this.onTopicChange = onTopicChange;
    this.id = null;
    this.state = null;
    this.topicId = null;
    this.ended = false;
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

  /** The logs topic the page's event stream should carry (null: none). */
  topic() {
    return this.topicId ? `workspace:${this.topicId}:logs` : null;
  }

  setTopic(id) {
    if (id === this.topicId) return;
    this.topicId = id;
    this.onTopicChange();
  }

  /** Show the logs of workspace `id` in state `state` (null: nothing). */
  async show(id, state) {
    this.id = id;
    this.state = state;
    this.generation += 1;
    const generation = this.generation;
    this.ended = false;
    this.clear();
    this.mode("");
    if (!id) {
      this.setTopic(null);
      return;
    }
    await this.loadTail(); // the previous workspace's topic stays until then: one reconnect per switch
    if (generation === this.generation) this.setTopic(id);
  }

  /** The selected workspace changed state. */
  stateChanged(state) {
    const was = this.state;
    this.state = state;
    if (!this.id || state === was) return;
    if (state === "running") this.ended = false;
    else if (ENDED.has(state) && was) this.ended = true;
    this.refreshMode();
  }

  refreshMode() {
    if (this.state === "running") this.mode("following");
    else if (this.ended) this.mode(`ended: the workspace ${this.state}`);
    else this.mode(this.pane.childElementCount ? "last lines" : "no output yet");
  }

  /** The page's event stream (re)opened: fetch the tail again to cover what a reconnect may have missed. */
  streamLive() {
    if (this.id && this.topicId === this.id) this.loadTail();
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
      this.refreshMode();
    } catch (err) {
      if (generation !== this.generation) return;
      this.mode(err.status === 404 || err.status === 405 ? "logs not available" : err.message);
    }
  }

  /** A `log.line` event from the page's event stream (topic `workspace:<id>:logs`). */
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
