// The audit list (admins: everyone's, others: their own) with filters, "load more" and (admins) the chain check.

import { api } from "./api.js";
import { $, fmtTime, h, pick, setText } from "./ui.js";

function itemsOf(page) {
  if (Array.isArray(page)) return page;
  return page.items || page.servers || page.records || [];
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
