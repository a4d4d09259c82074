// The workspace list: rows keyed by id and updated in place from lifecycle events, the create form,
// start/stop/restart/delete/open actions, and clone/start progress bars.

import { api, getAll, report } from "./api.js";
import { EDITABLE } from "./edit.js";
import { checkFields, clearFieldErrors, FIELD_HELP, showApiError, showFieldError } from "./forms.js";
import { $, announce, confirmDialog, h, setText, toast } from "./ui.js";

const CAN = {
  start: new Set(["created", "stopped", "failed"]),
  stop: new Set(["starting", "running"]),
  restart: new Set(["running"]),
  // the relay starts a stopped workspace when its page is opened, shows why a failed one failed
  open: new Set(["created", "starting", "running", "stopped", "failed"]),
  terminal: new Set(["running"]),
};
const STATE_OF_TYPE = {
  "workspace.created": "created",
  "workspace.starting": "starting",
  "workspace.running": "running",
  "workspace.stopping": "stopping",
  "workspace.stopped": "stopped",
  "workspace.failed": "failed",
};

/** `text` as unbreakable parts that may wrap only after "/", ":" and "@" (never mid-word, nor at a "-"). */
function breakable(text) {
  return text.split(/(?<=[/:@])/).flatMap((part, i) => [...(i ? [h("wbr")] : []), h("span", { class: "seg" }, part)]);
}

export class WorkspaceList {
  constructor(app) {
    this.app = app;
    this.items = new Map(); // id -> workspace record
    this.rows = new Map(); // id -> {tr, cells...}
    this.progress = new Map(); // id -> {kind, percent, phase}
    this.busy = new Set(); // ids with a request in flight
    this.users = new Map(); // owner id -> user name (admins)
    this.refetchTimers = new Map();
    // ids changed by events while a list fetch is in flight: its older snapshot must not undo them
    this.inFlight = new Set();
    $("#create-form").addEventListener("submit", (e) => this.create(e));
    this.templates = new Map(); // id -> template (newest version) the caller may use
    $("#create-template").addEventListener("change", () => this.applyTemplate());
    $("#create-more").addEventListener("toggle", (e) => {
      if (e.target.open && this.app.isAdmin) this.loadServers();
    });
  }

  clear() {
    this.items.clear();
    for (const row of this.rows.values()) row.tr.remove();
    this.rows.clear();
    this.progress.clear();
    this.renderEmpty();
  }

  async load() {
    const showAll = this.app.isAdmin && this.app.showAll;
    let rows;
    const touched = new Set();
    this.inFlight.add(touched);
    try {
      rows = await getAll("/api/workspaces", { all: showAll || undefined, limit: 200 });
    } catch {
      return;
    } finally {
      this.inFlight.delete(touched);
    }
    if (this.app.isAdmin && showAll && !this.users.size) await this.loadUsers();
    const seen = new Set();
    for (const ws of rows) {
      seen.add(ws.id);
      if (!touched.has(ws.id)) this.upsert(ws);
    }
    for (const id of [...this.items.keys()]) if (!seen.has(id) && !touched.has(id)) this.remove(id);
    this.sortRows();
    this.renderEmpty();
    this.loadQuota();
    this.loadTemplates();
  }

  /** The templates the caller may use (the create form's choice); the chosen one is kept. */
  async loadTemplates() {
    let list;
    try {
      list = await api("GET", "/api/templates", { quiet: true });
    } catch {
      return;
    }
    const select = $("#create-template");
    const keep = select.value;
    this.templates = new Map(list.map((t) => [t.id, t]));
    select.replaceChildren(
      h("option", { value: "" }, "no template"),
      ...list.map((t) => h("option", { value: t.id }, t.description ? `${t.name}: ${t.description}` : t.name)),
    );
    select.value = this.templates.has(keep) ? keep : "";
    this.applyTemplate();
  }

  /** Limit the resource fields to the chosen template's bounds; a template brings its own image. */
  applyTemplate() {
    const form = $("#create-form");
    const t = this.templates.get(form.template.value);
    form.image.disabled = Boolean(t);
    if (t) form.image.value = "";
    form.image.placeholder = t ? t.image : "the hub's default";
    form.cpu.max = t ? String(t.max_cpu) : "";
    form.memory_mb.max = t ? String(t.max_memory_mb) : "";
    form.cpu.placeholder = t ? `${t.default_cpu} (up to ${t.max_cpu})` : "hub default";
    form.memory_mb.placeholder = t ? `${t.default_memory_mb} (up to ${t.max_memory_mb})` : "hub default";
    if (t) {
      form.cpu.dataset.help = `This template allows 0.1 to ${t.max_cpu} CPUs.`;
      form.memory_mb.dataset.help = `This template allows 64 to ${t.max_memory_mb} MiB.`;
    } else {
      delete form.cpu.dataset.help;
      delete form.memory_mb.dataset.help;
    }
  }

  /** The caller's usage against their quota, small beside the title ("3 of 4 running"). */
  async loadQuota() {
    let q;
    try {
      q = await api("GET", "/api/auth/quota", { quiet: true });
    } catch {
      return;
    }
    const { limits: l, usage: u } = q;
    const part = (used, max, what) => (max == null ? null : `${used} of ${max} ${what}`);
    const parts = [
      part(u.running, l.max_running, "running") || `${u.running} running`,
      part(u.workspaces, l.max_workspaces, "workspaces"),
      part(u.cpu, l.max_cpu, "CPUs"),
      part(u.memory_mb, l.max_memory_mb, "MiB"),
    ].filter(Boolean);
    const el = $("#quota");
    setText(el, parts.join(" · "));
    el.hidden = false;
  }

  /** Admins: the servers a new workspace may be placed on (the create form's choice; not disabled or draining). */
  async loadServers() {
    const select = $("#create-server");
    try {
      const servers = (await api("GET", "/api/admin/servers", { quiet: true })).filter((s) => s.enabled && !s.draining);
      const keep = select.value;
      select.replaceChildren(
        h("option", { value: "" }, "least loaded"),
        ...servers.map((s) => h("option", { value: s.id }, `${s.name} (${s.running} running)`)),
      );
      select.value = servers.some((s) => s.id === keep) ? keep : "";
    } catch {
      /* placement stays automatic */
    }
  }

  async loadUsers() {
    try {
      const page = await api("GET", "/api/admin/users", { quiet: true, query: { limit: 200 } });
      for (const u of Array.isArray(page) ? page : page.items || []) this.users.set(u.id, u.username);
    } catch {
      /* owner names are a nicety: ids are shown instead */
    }
  }

  visible(ws) {
    return (this.app.isAdmin && this.app.showAll) || ws.owner_id === undefined || ws.owner_id === this.app.me.id;
  }

  upsert(ws) {
    for (const touched of this.inFlight) touched.add(ws.id);
    const prev = this.items.get(ws.id) || {};
    const merged = { ...prev, ...ws };
    this.items.set(ws.id, merged);
    if (!this.rows.has(ws.id)) this.rows.set(ws.id, this.buildRow(ws.id));
    this.renderRow(ws.id);
    this.app.onWorkspaceChanged(merged);
  }

  remove(id) {
    for (const touched of this.inFlight) touched.add(id);
    const row = this.rows.get(id);
    if (row) row.tr.remove();
    this.rows.delete(id);
    this.items.delete(id);
    this.progress.delete(id);
    this.renderEmpty();
    this.app.onWorkspaceRemoved(id);
  }

  sortRows() {
    const body = $("#ws-body");
    const ids = [...this.items.values()]
      .sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")))
      .map((ws) => ws.id);
    for (const id of ids) body.append(this.rows.get(id).tr);
  }

  renderEmpty() {
    $("#ws-empty").hidden = this.items.size > 0;
  }

  buildRow(id) {
    const nameBtn = h("button", {
      type: "button",
      class: "link name",
      onclick: () => {
        this.app.select(id);
        this.app.details.reveal();
      },
    });
    const idText = h("small", { class: "muted mono" }, id);
    const owner = h("td", { class: "owner-col" });
    const badge = h("span", { class: "badge" });
    const reason = h("small", { class: "reason" });
    const bar = h("div", { class: "bar" });
    const track = h("div", { class: "progress", role: "progressbar", hidden: true }, bar);
    const phase = h("small", { class: "phase muted" });
    const image = h("span", { class: "mono" });
    const git = h("small", { class: "muted mono git" });
    const open = h("a", { class: "button small", target: "_blank", rel: "noopener" }, "Open");
    const start = h("button", { type: "button", class: "small", onclick: () => this.action(id, "start") }, "Start");
    const stop = h("button", { type: "button", class: "small", onclick: () => this.action(id, "stop") }, "Stop");
    const restart = h(
      "button",
      { type: "button", class: "small ghost", onclick: () => this.action(id, "restart") },
      "Restart",
    );
    const edit = h("button", { type: "button", class: "small ghost", onclick: () => this.app.edit.open(this.items.get(id)) }, "Edit");
    const term = h("button", { type: "button", class: "small ghost", onclick: () => this.openTerminal(id) }, "Terminal");
    const del = h("button", { type: "button", class: "small danger", onclick: () => this.confirmDelete(id) }, "Delete");
    const tr = h(
      "tr",
      { dataset: { id } },
      h("td", { class: "name-col" }, nameBtn, idText),
      owner,
      h("td", { class: "state-col" }, badge, reason, track, phase),
      h("td", { class: "image-col" }, image, git),
      h("td", { class: "actions" }, h("div", { class: "btns" }, open, term, start, stop, restart, edit, del)),
    );
    return { tr, nameBtn, owner, badge, reason, track, bar, phase, image, git, open, term, edit, start, stop, restart, del };
  }

  renderRow(id) {
    const ws = this.items.get(id);
    const row = this.rows.get(id);
    if (!ws || !row) return;
    const state = ws.state || "unknown";
    const name = ws.name || id;
    row.tr.dataset.state = state;
    row.tr.classList.toggle("selected", this.app.selected === id);
    setText(row.nameBtn, name);
    row.nameBtn.setAttribute("aria-pressed", String(this.app.selected === id));
    row.nameBtn.setAttribute("aria-label", `Show details of ${name}`);
    row.owner.hidden = !(this.app.isAdmin && this.app.showAll);
    setText(row.owner, this.users.get(ws.owner_id) || (ws.owner_id ?? ""));
    row.badge.className = `badge state-${state}`;
    setText(row.badge, state);
    setText(row.reason, ws.state_reason || ws.reason || "");
    if (row.image.dataset.value !== (ws.image || "")) {
      row.image.dataset.value = ws.image || "";
      row.image.replaceChildren(...breakable(ws.image || ""));
    }
    setText(row.git, ws.git_url ? `${ws.git_url}${ws.git_ref ? ` @ ${ws.git_ref}` : ""}` : "");
    const busy = this.busy.has(id);
    row.open.href = ws.url || `/w/${id}/`;
    const opens = state === "running" ? "" : state === "failed" ? " (shows why it failed)" : " (starts it)";
    row.open.setAttribute("aria-label", `Open the IDE of ${name} in a new tab${opens}`);
    row.open.title = opens ? `Open${opens}` : "";
    row.open.classList.toggle("disabled", !CAN.open.has(state));
    row.open.setAttribute("aria-disabled", String(!CAN.open.has(state)));
    row.open.tabIndex = CAN.open.has(state) ? 0 : -1;
    for (const action of ["start", "stop", "restart"]) {
      row[action].disabled = busy || !CAN[action].has(state);
      row[action].setAttribute("aria-label", `${action[0].toUpperCase()}${action.slice(1)} ${name}`);
    }
    row.term.disabled = !CAN.terminal.has(state);
    row.edit.disabled = busy || !EDITABLE.has(state) || ws.state_reason === "cloning";
    row.edit.setAttribute("aria-label", `Edit ${name}`);
    row.term.setAttribute("aria-label", `Open a terminal in ${name}`);
    row.term.title = this.app.terminal.installed ? "" : "The terminal's browser assets are not installed (just assets)";
    row.del.disabled = busy;
    row.del.setAttribute("aria-label", `Delete ${name}`);
    this.renderProgress(id);
  }

  renderProgress(id) {
    const row = this.rows.get(id);
    const ws = this.items.get(id);
    if (!row || !ws) return;
    let p = this.progress.get(id);
    if (!p && ws.state === "starting") p = { kind: "start", percent: null, phase: "starting" };
    row.track.hidden = !p;
    setText(row.phase, p ? p.phase || "" : "");
    if (!p) return;
    const label = p.kind === "clone" ? `Cloning ${ws.name || id}` : `Starting ${ws.name || id}`;
    row.track.setAttribute("aria-label", label);
    row.track.dataset.kind = p.kind;
    if (p.percent === null || p.percent === undefined) {
      row.track.classList.add("indeterminate");
      row.track.removeAttribute("aria-valuenow");
      row.bar.style.width = "";
    } else {
      const pct = Math.max(0, Math.min(100, Number(p.percent)));
      row.track.classList.remove("indeterminate");
      row.track.setAttribute("aria-valuemin", "0");
      row.track.setAttribute("aria-valuemax", "100");
      row.track.setAttribute("aria-valuenow", String(Math.round(pct)));
      row.bar.style.width = `${pct}%`;
    }
  }

  /** Refresh the quota line once after a burst of lifecycle events. */
  quotaSoon() {
    clearTimeout(this.quotaTimer);
    this.quotaTimer = setTimeout(() => this.loadQuota(), 300);
  }

  /** Apply one event from the hub. */
  handleEvent(ev) {
    const data = ev.data || {};
    const id = data.workspace_id || data.id || (ev.topic || "").split(":")[1];
    if (!id) return;
    if (ev.type === "workspace.deleted") {
      if (this.items.has(id)) this.remove(id);
      this.quotaSoon();
      return;
    }
    if (ev.type === "clone.progress") {
      this.onCloneProgress(id, data);
      return;
    }
    if (!ev.type.startsWith("workspace.")) return;
    if (ev.type in STATE_OF_TYPE) this.quotaSoon();
    if (ev.type === "workspace.progress") {
      const pct = data.percent ?? data.progress;
      const step = [data.step && String(data.step).replace(/_/g, " "), data.phase || data.status]
        .filter(Boolean)
        .join(": ");
      this.progress.set(id, { kind: "start", percent: pct ?? null, phase: step || "starting" });
    }
    const known = this.items.get(id);
    const patch = { id };
    for (const key of ["name", "owner_id", "server_id", "image"]) if (data[key] !== undefined) patch[key] = data[key];
    const state = data.state || STATE_OF_TYPE[ev.type];
    if (state) patch.state = state;
    if ("reason" in data || state) patch.state_reason = data.reason ?? data.state_reason ?? null;
    if (!known) {
      if (!this.visible(patch)) return;
      this.upsert({ created_at: ev.at || new Date().toISOString(), ...patch });
      this.sortRows();
      this.renderEmpty();
    } else {
      const before = known.state;
      this.upsert(patch);
      if (state && state !== before) announce(`${known.name || id} is ${state}${patch.state_reason ? `: ${patch.state_reason}` : ""}`);
    }
    if (state && state !== "starting" && this.progress.get(id)?.kind === "start") this.progress.delete(id);
    // a clone that ended (failed, or the row moved on) leaves no bar behind
    if (this.progress.get(id)?.kind === "clone" && (state === "failed" || ev.type === "workspace.cloned")) {
      this.progress.delete(id);
    }
    this.renderProgress(id);
    if (ev.type === "workspace.stop_pending") {
      const name = (known || patch).name || id;
      toast(`${name} will be stopped soon for inactivity`, { kind: "info", title: "Idle" });
    }
    this.refetchSoon(id);
  }

  onCloneProgress(id, data) {
    const raw = data.percent ?? data.progress ?? data.pct ?? (data.fraction != null ? data.fraction * 100 : null);
    const percent = raw === undefined || raw === null || Number.isNaN(Number(raw)) ? null : Number(raw);
    const phase = data.phase || data.stage || data.message || "cloning";
    const done = data.done || data.finished || (percent !== null && percent >= 100 && /done|complete/i.test(phase));
    this.progress.set(id, { kind: "clone", percent, phase: percent === null ? phase : `${phase} ${Math.round(percent)}%` });
    this.renderProgress(id);
    if (done) {
      setTimeout(() => {
        if (this.progress.get(id)?.kind === "clone") this.progress.delete(id);
        this.renderProgress(id);
      }, 1500);
    }
  }

  /** Fetch the full record shortly after events (coalesced), for fields events do not carry. */
  refetchSoon(id) {
    clearTimeout(this.refetchTimers.get(id));
    this.refetchTimers.set(
      id,
      setTimeout(async () => {
        this.refetchTimers.delete(id);
        try {
          const ws = await api("GET", `/api/workspaces/${encodeURIComponent(id)}`, { quiet: true });
          if (this.items.has(id)) this.upsert(ws);
        } catch {
          /* deleted meanwhile, or no longer visible: the events say so */
        }
      }, 400),
    );
  }

  async create(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const name = form.name.value.trim();
    clearFieldErrors(form);
    if (!name) {
      showFieldError(form, "name", `Give the workspace a name. ${FIELD_HELP.name}`);
      form.name.focus();
      return;
    }
    if (!checkFields(form, ["name", "image", "git_url", "git_ref", "cpu", "memory_mb"])) return;
    const body = { name };
    if (form.template.value) body.template = form.template.value;
    else if (form.image.value.trim()) body.image = form.image.value.trim();
    if (form.git_url.value.trim()) body.git_url = form.git_url.value.trim();
    if (form.git_ref.value.trim()) body.git_ref = form.git_ref.value.trim();
    if (form.cpu.value) body.cpu = Number(form.cpu.value);
    if (form.memory_mb.value) body.memory_mb = Math.round(Number(form.memory_mb.value));
    if (this.app.isAdmin && form.server_id.value) body.server_id = form.server_id.value;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const ws = await api("POST", "/api/workspaces", { body, quiet: true });
      this.upsert(ws);
      this.sortRows();
      this.renderEmpty();
      const template = form.template.value;
      form.reset();
      form.template.value = template;
      this.applyTemplate();
      this.app.select(ws.id);
      toast(`Workspace ${ws.name} created`, { kind: "info" });
    } catch (err) {
      if (!showApiError(form, err)) report(err, "POST", "/api/workspaces");
    } finally {
      button.disabled = false;
    }
  }

  async action(id, action) {
    this.busy.add(id);
    if (action !== "stop") this.progress.set(id, { kind: "start", percent: null, phase: `${action} requested` });
    this.renderRow(id);
    try {
      const ws = await api("POST", `/api/workspaces/${encodeURIComponent(id)}/${action}`);
      if (ws && ws.id === id && ws.state) this.upsert(ws);
    } catch (err) {
      if (err.status === 404 || err.status === 405) this.refetchSoon(id);
    } finally {
      this.busy.delete(id);
      if (this.progress.get(id)?.phase?.endsWith("requested")) this.progress.delete(id);
      this.renderRow(id);
    }
  }

  openTerminal(id) {
    if (this.app.selected !== id) this.app.select(id);
    this.app.terminal.open(id);
  }

  async confirmDelete(id) {
    const ws = this.items.get(id);
    const { ok, extra } = await confirmDialog({
      title: `Delete ${ws?.name || id}?`,
      text: "Its container is removed. Files stay unless you purge them.",
      action: "Delete",
      extra: "Also delete the workspace's files",
    });
    if (!ok) return;
    this.busy.add(id);
    this.renderRow(id);
    try {
      await api("DELETE", `/api/workspaces/${encodeURIComponent(id)}`, { query: { purge: extra || undefined } });
      this.remove(id);
    } catch (err) {
      if (err.status === 404) this.remove(id);
    } finally {
      this.busy.delete(id);
      this.renderRow(id);
    }
  }
}
