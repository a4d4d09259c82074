// Admins: users — create, change role, disable/enable, reset password (PATCH /api/admin/users/{id}).

import { api } from "./api.js";
import { checkFields, clearFieldErrors, FIELD_HELP, showApiError, showFieldError } from "./forms.js";
import { $, confirmDialog, fmtTime, h, setText, toast } from "./ui.js";

/** A random password people can copy (about 100 bits). */
function generatePassword() {
  const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return [...bytes].map((b) => alphabet[b % alphabet.length]).join("");
}

export class Users {
  constructor(app) {
    this.app = app;
    this.target = null;
    this.mounted = false;
  }

  /** Put the page in place on first use (it holds password fields the sign-in page must not share). */
  mount() {
    if (this.mounted) return;
    this.mounted = true;
    $("#users-view").append($("#users-template").content.cloneNode(true));
    $("#user-form").addEventListener("submit", (e) => this.create(e));
    $("#user-generate").addEventListener("click", () => ($("#user-password").value = generatePassword()));
    $("#pw-form").addEventListener("submit", (e) => this.savePassword(e));
    $("#pw-generate").addEventListener("click", () => ($("#pw-password").value = generatePassword()));
    $("#pw-cancel").addEventListener("click", () => $("#pw-dialog").close());
  }

  async load() {
    this.mount();
    const empty = $("#users-empty");
    let users;
    try {
      users = await api("GET", "/api/admin/users", { quiet: true, query: { limit: 500 } });
    } catch (err) {
      $("#users-body").replaceChildren();
      empty.hidden = false;
      setText(empty, err.message);
      return;
    }
    empty.hidden = users.length > 0;
    setText(empty, "No users.");
    $("#users-body").replaceChildren(...users.map((u) => this.row(u)));
  }

  row(user) {
    const me = this.app.me && user.id === this.app.me.id;
    const role = h(
      "select",
      { "aria-label": `Role of ${user.username}`, disabled: me },
      h("option", { value: "user", selected: user.role === "user" }, "user"),
      h("option", { value: "admin", selected: user.role === "admin" }, "admin"),
    );
    role.addEventListener("change", () => this.update(user, { role: role.value }));
    const toggle = h(
      "button",
      { type: "button", class: "small", disabled: me, "aria-label": `${user.disabled ? "Enable" : "Disable"} ${user.username}` },
      user.disabled ? "Enable" : "Disable",
    );
    toggle.addEventListener("click", () => this.toggle(user));
    const reset = h(
      "button",
      { type: "button", class: "small ghost", "aria-label": `Reset the password of ${user.username}` },
      "Reset password",
    );
    reset.addEventListener("click", () => this.openPassword(user));
    return h(
      "tr",
      { dataset: { id: String(user.id) } },
      h("td", {}, user.username, me ? h("small", { class: "muted" }, " (you)") : null),
      h("td", {}, role),
      h("td", { class: user.disabled ? "expired" : "" }, user.disabled ? "disabled" : "active"),
      h("td", {}, fmtTime(user.created_at)),
      h("td", { class: "actions" }, h("div", { class: "btns" }, toggle, reset)),
    );
  }

  async create(e) {
    e.preventDefault();
    const form = e.currentTarget;
    clearFieldErrors(form);
    const username = form.username.value.trim();
    if (!username) return void showFieldError(form, "username", `Give a user name. ${FIELD_HELP.username}`);
    if (!checkFields(form, ["username", "password"])) return;
    if (form.password.value.length < 8) return void showFieldError(form, "password", FIELD_HELP.password);
    const body = { username, password: form.password.value, role: form.role.value };
    try {
      const user = await api("POST", "/api/admin/users", { body, quiet: true });
      form.reset();
      toast(`User ${user.username} created`, { kind: "info" });
      await this.load();
    } catch (err) {
      if (!showApiError(form, err)) toast(err.message, { title: "The user was not created" });
    }
  }

  async update(user, body) {
    try {
      await api("PATCH", `/api/admin/users/${user.id}`, { body });
      toast(`${user.username} updated`, { kind: "info" });
    } catch {
      /* reported by api() */
    }
    await this.load();
  }

  async toggle(user) {
    if (!user.disabled) {
      const { ok } = await confirmDialog({
        title: `Disable ${user.username}?`,
        text: "They can no longer sign in, and their tokens stop working. Their workspaces stay.",
        action: "Disable",
      });
      if (!ok) return;
    }
    await this.update(user, { disabled: !user.disabled });
  }

  openPassword(user) {
    this.target = user;
    const form = $("#pw-form");
    clearFieldErrors(form);
    setText($("#pw-title"), `New password for ${user.username}`);
    form.password.value = generatePassword();
    $("#pw-dialog").showModal();
    form.password.select();
  }

  async savePassword(e) {
    e.preventDefault();
    const form = e.currentTarget;
    clearFieldErrors(form);
    if (form.password.value.length < 8) return void showFieldError(form, "password", FIELD_HELP.password);
    try {
      await api("PATCH", `/api/admin/users/${this.target.id}`, { body: { password: form.password.value }, quiet: true });
      $("#pw-dialog").close();
      toast(`Password of ${this.target.username} changed: give it to them over a safe channel`, { kind: "info" });
    } catch (err) {
      if (!showApiError(form, err)) showFieldError(form, "password", err.message);
    }
  }

  /** Signed out: take the page away again (no user list or password field stays behind). */
  clear() {
    if (!this.mounted) return;
    $("#users-view .card").remove();
    $("#pw-dialog").remove();
    this.mounted = false;
  }
}
