// Servers (Docker engines and Kubernetes namespaces) with their counts and a test button (admins), and the audit list (admins: everyone's,
// others: their own) with filters and "load more".

import { api } from "./api.js";
import { checkFields, clearFieldErrors, FIELD_HELP, showApiError, showFieldError } from "./forms.js";
import { $, confirmDialog, fmtTime, h, pick, setText, toast } from "./ui.js";

function itemsOf(page) {
  if (Array.isArray(page)) return page;
  return page.items || page.servers || page.records || [];
}

/** Where a server is: its engine URL, or its namespace and kubeconfig. */
function where(server) {
  if (server.kind === "kubernetes") return `${server.namespace} · ${server.kubeconfig}`;
  return server.docker_url || server.url || "–";
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

export class Servers {
  constructor() {
    $("#servers-refresh").addEventListener("click", () => this.load());
    $("#server-form").addEventListener("submit", (e) => this.add(e));
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

  async remove(server) {
    const { ok } = await confirmDialog({
      title: `Remove ${server.name}?`,
      text: "The hub stops placing workspaces there. A server that still holds workspaces cannot be removed.",
      action: "Remove",
    });
    if (!ok) return;
    try {
      await api("DELETE", `/api/admin/servers/${encodeURIComponent(server.id)}`);
    } catch {
      /* reported by api() */
    }
    await this.load();
  }

  async load() {
    const body = $("#servers-body");
    const empty = $("#servers-empty");
    let servers;
    try {
      servers = itemsOf(await api("GET", "/api/admin/servers", { quiet: true }));
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
    const count = (...keys) => pick(server, ...keys) ?? "–";
    const test = h("button", { type: "button", class: "small" }, "Test");
    test.setAttribute("aria-label", `Test ${server.name || server.id}`);
    const remove = h("button", { type: "button", class: "small danger", "aria-label": `Remove ${server.name}` }, "Remove");
    remove.addEventListener("click", () => this.remove(server));
    test.addEventListener("click", async () => {
      test.disabled = true;
      setText(result, "testing…");
      result.className = "check";
      try {
        const r = await api("POST", `/api/admin/servers/${encodeURIComponent(server.id)}/test`);
        const ok = r.ok !== false && !r.error;
        result.className = `check ${ok ? "ok" : "bad"}`;
        setText(result, ok ? `ok · ${testSummary(r)}` : `failed: ${r.error || "no answer"}`);
      } catch (err) {
        result.className = "check bad";
        setText(result, `failed: ${err.message}`);
      } finally {
        test.disabled = false;
      }
    });
    return h(
      "tr",
      { dataset: { id: server.id } },
      h("td", {}, h("strong", {}, server.name || server.id), server.is_default ? h("small", { class: "muted" }, " default") : null),
      h("td", {}, server.kind || "docker"),
      h("td", { class: "mono" }, where(server)),
      h("td", { class: "num" }, count("running", "counts.running", "running_count")),
      h("td", { class: "num" }, count("placed", "counts.placed", "placed_count", "workspaces")),
      h("td", { class: "num" }, count("max_workspaces")),
      h("td", {}, result),
      h("td", { class: "actions" }, h("div", { class: "btns" }, test, remove)),
    );
  }
}

export class Audit {
  constructor(app) {
    this.app = app;
    this.cursor = null;
    this.form = $("#audit-form");
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.load();
    });
    this.form.addEventListener("reset", () => setTimeout(() => this.load(), 0));
    $("#audit-more").addEventListener("click", () => this.load({ more: true }));
    $("#audit-verify").addEventListener("click", () => this.verify());
  }

  /** Admins: walk the hash chain and say whether it is intact. */
  async verify() {
    const out = $("#audit-chain");
    out.className = "check";
    setText(out, "verifying…");
    try {
      const r = await api("GET", "/api/admin/audit/verify");
      out.className = `check ${r.ok ? "ok" : "bad"}`;
      setText(
        out,
        r.ok
          ? `chain intact (${r.checked} records)`
          : `chain broken at record ${r.first_bad_id}${r.reason ? `: ${r.reason}` : ""}`,
      );
    } catch (err) {
      out.className = "check bad";
      setText(out, `not verified: ${err.message}`);
    }
  }

  filters() {
    const f = new FormData(this.form);
    const query = {};
    for (const key of ["action", "workspace"]) if (f.get(key)) query[key] = String(f.get(key)).trim();
    if (this.app.isAdmin && f.get("actor")) query.actor = String(f.get("actor")).trim();
    if (query.workspace) {
      query.workspace_id = query.workspace;
      delete query.workspace;
    }
    return query;
  }

  async load({ more = false } = {}) {
    const path = this.app.isAdmin ? "/api/admin/audit" : "/api/audit";
    const body = $("#audit-body");
    const empty = $("#audit-empty");
    const query = { ...this.filters(), limit: 100 };
    if (more && this.cursor) query.cursor = this.cursor;
    let page;
    try {
      page = await api("GET", path, { query, quiet: !more });
    } catch (err) {
      if (!more) {
        body.replaceChildren();
        empty.hidden = false;
        setText(empty, err.status === 404 || err.status === 405 ? "The audit log is not available on this hub." : err.message);
      }
      return;
    }
    const rows = itemsOf(page);
    this.cursor = Array.isArray(page) ? null : page.next_cursor || null;
    const trs = rows.map((r) => this.row(r));
    if (more) body.append(...trs);
    else body.replaceChildren(...trs);
    empty.hidden = body.childElementCount > 0;
    setText(empty, "No records match.");
    $("#audit-more").hidden = !this.cursor;
  }

  row(r) {
    const sha = pick(r, "sha256", "content_sha256"); // of the content/diff/command; `hash` is the chain link
    const outcome = r.outcome || "ok";
    return h(
      "tr",
      {},
      h("td", { class: "nowrap" }, fmtTime(pick(r, "at", "created_at", "time"))),
      h("td", {}, pick(r, "actor_name", "actor", "actor_id") ?? "–"),
      h("td", { class: "mono", title: [r.request_id, r.client_addr].filter(Boolean).join(" · ") }, r.action || "–"),
      h("td", { class: "mono" }, r.workspace_id || "–"),
      h("td", { class: "mono trunc", title: r.target || "" }, r.target || ""),
      h("td", {}, h("span", { class: `badge outcome-${outcome}` }, outcome)),
      h("td", { class: "mono", title: sha || "" }, sha ? `${String(sha).slice(0, 12)}…` : ""),
    );
  }
}
