// Admins: servers (Docker engines and Kubernetes namespaces) — add, edit (name, labels, public host, capacity, enabled), test, drain/undrain and
// remove (POST/PATCH/DELETE /api/admin/servers, POST …/test), with their running/placed counts.

import { api } from "./api.js";
import { checkFields, clearFieldErrors, FIELD_HELP, showApiError, showFieldError } from "./forms.js";
import { $, confirmDialog, h, setText, toast } from "./ui.js";

const serverPath = (server) => `/api/admin/servers/${encodeURIComponent(server.id)}`;

/** `{"zone": "a", "gpu": "a100"}` as `zone=a, gpu=a100` (what the labels field shows and takes). */
export function labelsText(labels) {
  return Object.entries(labels || {})
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
}

/** Parse `key=value, key=value` (commas or new lines); null when a part does not fit. */
export function parseLabels(text) {
  const labels = {};
  for (const part of text.split(/[,\n]/).map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    const key = at > 0 ? part.slice(0, at).trim() : "";
    const value = at > 0 ? part.slice(at + 1).trim() : "";
    if (!key || key.length > 64 || value.length > 255) return null;
    labels[key] = value;
  }
  return labels;
}

/** Where a server is: its engine URL, or its namespace and kubeconfig. */
function where(server) {
  if (server.kind === "kubernetes") return `${server.namespace} · ${server.kubeconfig}`;
  return server.docker_url || "–";
}

/** A passed check in a line: the version, and for Kubernetes the nodes and the quota's room. */
function testSummary(r) {
  const parts = [];
  const version = r.docker_version || r.version;
  if (version) parts.push(`${r.kind === "kubernetes" ? "Kubernetes" : "Docker"} ${version}`);
  if (r.api_version && r.kind !== "kubernetes") parts.push(`API ${r.api_version}`);
  if (r.nodes !== null && r.nodes !== undefined) parts.push(`${r.nodes} node${r.nodes === 1 ? "" : "s"}`);
  if (r.quota) {
    const room = Object.entries(r.quota).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`);
    parts.push(`quota left: ${room.join(", ")}`);
  } else if (r.kind === "kubernetes") parts.push("no quota");
  if (r.latency_ms !== undefined) parts.push(`${Number(r.latency_ms).toFixed(0)} ms`);
  return parts.join(" · ");
}

function stateOf(server) {
  if (!server.enabled) return "disabled";
  return server.draining ? "draining" : "active";
}

export class Servers {
  constructor() {
    this.editing = null;
    this.form = $("#server-edit-form");
    $("#servers-refresh").addEventListener("click", () => this.load());
    $("#server-form").addEventListener("submit", (e) => this.add(e));
    this.form.addEventListener("submit", (e) => this.save(e));
    $("#server-edit-cancel").addEventListener("click", () => $("#server-edit").close());
    $("#server-kind").addEventListener("change", () => this.showKind());
  }

  /** Show the fields of the chosen kind only. */
  showKind() {
    const kind = $("#server-kind").value;
    for (const field of document.querySelectorAll("#server-form [data-kind]")) field.hidden = field.dataset.kind !== kind;
  }

  async add(e) {
    e.preventDefault();
    const form = e.currentTarget;
    clearFieldErrors(form);
    const name = form.name.value.trim();
    const kind = form.kind.value;
    if (!name) return void showFieldError(form, "name", `Give the server a name. ${form.name.dataset.help}`);
    const body = { name, kind, max_workspaces: Number(form.max_workspaces.value || 50) };
    if (kind === "kubernetes") {
      body.kubeconfig = form.kubeconfig.value.trim();
      body.namespace = form.namespace.value.trim();
      if (!body.kubeconfig) return void showFieldError(form, "kubeconfig", FIELD_HELP.kubeconfig);
      if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(body.namespace))
        return void showFieldError(form, "namespace", FIELD_HELP.namespace);
    } else {
      body.docker_url = form.docker_url.value.trim();
      if (!/^(unix|tcp):\/\/./.test(body.docker_url)) return void showFieldError(form, "docker_url", FIELD_HELP.docker_url);
    }
    if (!checkFields(form, ["name", "max_workspaces"])) return;
    try {
      const server = await api("POST", "/api/admin/servers", { body, quiet: true });
      form.reset();
      this.showKind();
      toast(`Server ${server.name} added: test it to see whether it answers`, { kind: "info" });
      await this.load();
    } catch (err) {
      if (!showApiError(form, err)) toast(err.message, { title: "The server was not added" });
    }
  }

  openEdit(server) {
    this.editing = server;
    const form = this.form;
    clearFieldErrors(form);
    $("#server-edit-error").hidden = true;
    setText($("#server-edit-title"), `Edit ${server.name}`);
    form.name.value = server.name;
    form.labels.value = labelsText(server.labels);
    form.public_host.value = server.public_host || "";
    form.max_workspaces.value = String(server.max_workspaces);
    form.enabled.checked = server.enabled;
    $("#server-edit").showModal();
    form.name.focus();
  }

  /** The fields that differ from the server, as a PATCH body; null (and field errors shown) when one does not fit. */
  changes(form, server) {
    const name = form.name.value.trim();
    if (!name) {
      showFieldError(form, "name", `Give the server a name. ${form.name.dataset.help}`);
      return null;
    }
    if (!checkFields(form, ["name", "public_host", "max_workspaces"])) return null;
    const labels = parseLabels(form.labels.value);
    if (labels === null) {
      showFieldError(form, "labels", FIELD_HELP.labels);
      return null;
    }
    const body = {};
    if (name !== server.name) body.name = name;
    if (labelsText(labels) !== labelsText(server.labels)) body.labels = labels;
    const host = form.public_host.value.trim();
    if (host !== (server.public_host || "")) body.public_host = host;
    const max = Number(form.max_workspaces.value);
    if (max !== server.max_workspaces) body.max_workspaces = max;
    if (form.enabled.checked !== server.enabled) body.enabled = form.enabled.checked;
    return body;
  }

  async save(e) {
    e.preventDefault();
    const form = this.form;
    const server = this.editing;
    clearFieldErrors(form);
    $("#server-edit-error").hidden = true;
    const body = this.changes(form, server);
    if (body === null) return;
    if (Object.keys(body).length === 0) return void $("#server-edit").close();
    try {
      const saved = await api("PATCH", serverPath(server), { body, quiet: true });
      $("#server-edit").close();
      toast(`Server ${saved.name} saved`, { kind: "info" });
      await this.load();
    } catch (err) {
      if (!showApiError(form, err)) {
        $("#server-edit-error").hidden = false;
        setText($("#server-edit-error"), err.message);
      }
    }
  }

  async drain(server) {
    if (!server.draining) {
      const { ok } = await confirmDialog({
        title: `Drain ${server.name}?`,
        text:
          "New workspaces go to other servers; the ones placed here keep running. " +
          "Stop or move them, then disable or remove the server.",
        action: "Drain",
      });
      if (!ok) return;
    }
    try {
      await api("PATCH", serverPath(server), { body: { draining: !server.draining } });
      toast(`${server.name} ${server.draining ? "takes new workspaces again" : "is draining"}`, { kind: "info" });
    } catch {
      /* reported by api() */
    }
    await this.load();
  }

  async remove(server) {
    const { ok } = await confirmDialog({
      title: `Remove ${server.name}?`,
      text: "The hub stops placing workspaces there. A server that still holds workspaces cannot be removed.",
      action: "Remove",
    });
    if (!ok) return;
    try {
      await api("DELETE", serverPath(server));
    } catch {
      /* reported by api() */
    }
    await this.load();
  }

  async test(server, button, result) {
    button.disabled = true;
    setText(result, "testing…");
    result.className = "check";
    try {
      const r = await api("POST", `${serverPath(server)}/test`);
      const ok = r.ok !== false && !r.error;
      result.className = `check ${ok ? "ok" : "bad"}`;
      setText(result, ok ? `ok · ${testSummary(r)}` : `failed: ${r.error || "no answer"}`);
    } catch (err) {
      result.className = "check bad";
      setText(result, `failed: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async load() {
    const body = $("#servers-body");
    const empty = $("#servers-empty");
    let servers;
    try {
      servers = await api("GET", "/api/admin/servers", { quiet: true });
    } catch (err) {
      body.replaceChildren();
      empty.hidden = false;
      setText(empty, err.status === 404 || err.status === 405 ? "Servers are not available on this hub." : err.message);
      return;
    }
    empty.hidden = servers.length > 0;
    setText(empty, "No servers registered (workspaces run as local processes).");
    body.replaceChildren(...servers.map((s) => this.row(s)));
  }

  row(server) {
    const result = h("span", { class: "check", role: "status" });
    const button = (text, label, action, cls = "small") => {
      const b = h("button", { type: "button", class: cls, "aria-label": `${label} ${server.name}` }, text);
      b.addEventListener("click", action);
      return b;
    };
    const test = button("Test", "Test", () => this.test(server, test, result));
    const edit = button("Edit", "Edit", () => this.openEdit(server));
    const drainText = server.draining ? "Undrain" : "Drain";
    const drain = button(drainText, drainText, () => this.drain(server), "small ghost");
    const remove = button("Remove", "Remove", () => this.remove(server), "small danger");
    const state = stateOf(server);
    const labels = labelsText(server.labels);
    return h(
      "tr",
      { dataset: { id: server.id } },
      h(
        "td",
        {},
        h("strong", {}, server.name),
        server.is_default ? h("small", { class: "muted" }, " default") : null,
        labels ? h("div", { class: "muted" }, labels) : null,
      ),
      h("td", {}, server.kind || "docker"),
      h("td", { class: "mono engine" }, where(server), server.public_host ? h("div", { class: "muted" }, server.public_host) : null),
      h("td", {}, h("span", { class: `badge server-${state}` }, state)),
      h("td", { class: "num", dataset: { label: "running" } }, String(server.running)),
      h("td", { class: "num", dataset: { label: "placed" } }, String(server.placed)),
      h("td", { class: "num", dataset: { label: "max" } }, String(server.max_workspaces)),
      h("td", { class: "check-col" }, result),
      h("td", { class: "actions" }, h("div", { class: "btns" }, test, edit, drain, remove)),
    );
  }
}
