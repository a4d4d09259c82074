// Sharing of the selected workspace (its owner or an admin): the grants, a user or group added by name at
// `use` or `view`, a grant revoked, and who is connected now. In path mode the hub refuses sharing
// (409 sharing_disabled): the section says why instead. Grantees (403) and others see no section.

import { api } from "./api.js";
import { $, confirmDialog, h, setText, toast } from "./ui.js";

const LEVELS = { use: "use (IDE, terminal, files)", view: "view (read-only)" };

export class Sharing {
  constructor() {
    this.id = null;
    this.generation = 0;
    $("#share-form").addEventListener("submit", (e) => this.add(e));
  }

  /** Show the sharing of workspace `id` (or nothing). */
  show(id) {
    this.id = id;
    this.generation += 1;
    $("#share-pane").hidden = true;
    if (id) this.load();
  }

  /** A grant of the shown workspace changed somewhere (an event): read it again. */
  changed(id) {
    if (id === this.id && !$("#share-pane").hidden) this.load();
  }

  async load() {
    const generation = this.generation;
    const id = this.id;
    let out;
    try {
      out = await api("GET", `/api/workspaces/${encodeURIComponent(id)}/grants`, { quiet: true });
    } catch (err) {
      if (generation !== this.generation) return;
      const off = err.code === "sharing_disabled";
      $("#share-pane").hidden = !off; // a grantee or a stranger: not theirs to manage
      $("#share-body").hidden = off;
      $("#share-note").hidden = !off;
      setText(
        $("#share-note"),
        off ? `Sharing is off on this hub: ${err.message}. Each workspace needs an origin of its own first.` : "",
      );
      setText($("#share-present"), "");
      return;
    }
    if (generation !== this.generation) return;
    $("#share-pane").hidden = false;
    $("#share-body").hidden = false;
    $("#share-note").hidden = true;
    this.render(out);
  }

  render({ grants, present }) {
    const list = $("#share-list");
    list.replaceChildren(...grants.map((g) => this.row(g)));
    if (!grants.length) list.append(h("li", { class: "muted" }, "Not shared with anyone."));
    const names = present.map((p) => p.username);
    setText($("#share-present"), names.length ? `connected now: ${names.join(", ")}` : "");
  }

  row(grant) {
    const who = grant.subject_name || `${grant.subject_kind} ${grant.subject_id}`;
    const revoke = h("button", { type: "button", class: "small danger" }, "Revoke");
    revoke.setAttribute("aria-label", `Revoke ${who}`);
    revoke.addEventListener("click", () => this.revoke(grant, who));
    return h(
      "li",
      { dataset: { kind: grant.subject_kind, id: grant.subject_id } },
      h("strong", {}, who),
      h("span", { class: "muted" }, ` ${grant.subject_kind}`),
      h("span", { class: "badge" }, LEVELS[grant.level] || grant.level),
      revoke,
    );
  }

  async add(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const id = this.id;
    const name = form.elements.name.value.trim();
    if (!id || !name) return;
    const body = { subject_kind: form.elements.kind.value, subject_name: name, level: form.elements.level.value };
    try {
      await api("POST", `/api/workspaces/${encodeURIComponent(id)}/grants`, { body, quiet: true });
    } catch (err) {
      toast(err.message, { title: "Share" });
      return;
    }
    form.elements.name.value = "";
    if (id === this.id) await this.load();
  }

  async revoke(grant, who) {
    const { ok } = await confirmDialog({
      title: `Stop sharing with ${who}?`,
      text: "Their open IDE, terminal and event streams of this workspace end within seconds.",
      action: "Revoke",
    });
    if (!ok) return;
    const id = this.id;
    try {
      await api("DELETE", `/api/workspaces/${encodeURIComponent(id)}/grants/${grant.subject_kind}/${grant.subject_id}`);
    } catch {
      return; /* api() showed the reason */
    }
    if (id === this.id) await this.load();
  }
}
