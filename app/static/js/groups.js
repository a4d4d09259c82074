// Groups (admins): every group with its member count, local groups created, renamed and deleted here, and a
// group's members added and removed. Groups synced from the identity provider are shown read-only.

import { api } from "./api.js";
import { $, confirmDialog, h, setText, toast } from "./ui.js";

export class Groups {
  constructor() {
    this.selected = null;
    $("#groups-refresh").addEventListener("click", () => this.load());
    $("#group-create").addEventListener("submit", (e) => this.create(e));
    $("#group-add-member").addEventListener("submit", (e) => this.addMember(e));
  }

  async load() {
    const body = $("#groups-body");
    const empty = $("#groups-empty");
    try {
      this.groups = await api("GET", "/api/admin/groups", { quiet: true });
    } catch (err) {
      body.replaceChildren();
      empty.hidden = false;
      setText(empty, err.message);
      return;
    }
    empty.hidden = this.groups.length > 0;
    setText(empty, "No groups yet. Create a local group above, or sign in through the identity provider.");
    body.replaceChildren(...this.groups.map((g) => this.row(g)));
    const still = this.groups.find((g) => g.id === this.selected?.id);
    this.showMembers(still || null);
  }

  row(group) {
    const name = h("button", { type: "button", class: "ghost small" }, group.name);
    name.setAttribute("aria-label", `Members of ${group.name}`);
    name.addEventListener("click", () => this.showMembers(group));
    const actions = h("td", {});
    if (!group.read_only) {
      const rename = h("button", { type: "button", class: "small ghost" }, "Rename");
      rename.setAttribute("aria-label", `Rename ${group.name}`);
      rename.addEventListener("click", () => this.rename(group));
      const remove = h("button", { type: "button", class: "small danger" }, "Delete");
      remove.setAttribute("aria-label", `Delete ${group.name}`);
      remove.addEventListener("click", () => this.remove(group));
      actions.append(rename, " ", remove);
    }
    return h(
      "tr",
      { dataset: { id: group.id } },
      h("td", {}, name),
      h("td", {}, group.source === "oidc" ? "identity provider (read-only)" : "local"),
      h("td", { class: "num" }, group.member_count),
      actions,
    );
  }

  async create(e) {
    e.preventDefault();
    const form = e.currentTarget;
    try {
      await api("POST", "/api/admin/groups", { body: { name: form.elements.name.value.trim() } });
      form.reset();
      await this.load();
    } catch {
      /* api() showed the reason */
    }
  }

  async rename(group) {
    const name = prompt(`New name for ${group.name}`, group.name);
    if (!name || name === group.name) return;
    try {
      await api("PATCH", `/api/admin/groups/${group.id}`, { body: { name: name.trim() } });
      await this.load();
    } catch {
      /* api() showed the reason */
    }
  }

  async remove(group) {
    const { ok } = await confirmDialog({
      title: `Delete group ${group.name}?`,
      text: `Its ${group.member_count} members leave it. Templates and servers limited to it must drop it first.`,
    });
    if (!ok) return;
    try {
      await api("DELETE", `/api/admin/groups/${group.id}`);
      if (this.selected?.id === group.id) this.selected = null;
      await this.load();
    } catch {
      /* api() showed the reason */
    }
  }

  async showMembers(group) {
    this.selected = group;
    const panel = $("#group-members");
    panel.hidden = !group;
    if (!group) return;
    setText($("#group-members-title"), `Members of ${group.name}`);
    $("#group-add-member").hidden = group.read_only;
    setText($("#group-members-note"), group.read_only ? "Synced from the identity provider at every sign-in." : "");
    let members;
    try {
      members = await api("GET", `/api/admin/groups/${group.id}/members`, { quiet: true });
    } catch (err) {
      toast(err.message, { title: "Members" });
      return;
    }
    const list = $("#group-members-list");
    list.replaceChildren(
      ...members.map((m) => {
        const item = h("li", {}, h("strong", {}, m.username), ` (${m.role}${m.disabled ? ", disabled" : ""}) `);
        if (!group.read_only) {
          const out = h("button", { type: "button", class: "small ghost" }, "Remove");
          out.setAttribute("aria-label", `Remove ${m.username} from ${group.name}`);
          out.addEventListener("click", () => this.member("DELETE", group, m.id));
          item.append(out);
        }
        return item;
      }),
    );
    if (!members.length) list.append(h("li", { class: "muted" }, "No members."));
  }

  async addMember(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const wanted = form.elements.user.value.trim();
    if (!wanted || !this.selected) return;
    let userId = /^\d+$/.test(wanted) ? Number(wanted) : null;
    if (userId === null) {
      let users;
      try {
        users = await api("GET", "/api/admin/users", { query: { limit: 500 } });
      } catch {
        return; /* api() showed the reason */
      }
      userId = users.find((u) => u.username === wanted)?.id ?? null;
      if (userId === null) {
        toast(`No user named ${wanted}`, { title: "Add member" });
        return;
      }
    }
    if (await this.member("PUT", this.selected, userId)) form.reset();
  }

  async member(method, group, userId) {
    try {
      await api(method, `/api/admin/groups/${group.id}/members/${userId}`);
    } catch {
      return false; /* api() showed the reason */
    }
    await this.load();
    return true;
  }
}
