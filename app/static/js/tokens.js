// API tokens: create (with an expiry), list, revoke. The raw token is shown once, right after creation.

import { api } from "./api.js";
import { $, confirmDialog, fmtTime, h, setText, toast } from "./ui.js";

export class Tokens {
  constructor() {
    $("#token-form").addEventListener("submit", (e) => this.create(e));
    $("#token-copy").addEventListener("click", () => this.copy());
    $("#token-done").addEventListener("click", () => this.hideNew());
  }

  async load() {
    const empty = $("#tokens-empty");
    let tokens;
    try {
      tokens = await api("GET", "/api/auth/tokens", { quiet: true });
    } catch (err) {
      $("#tokens-body").replaceChildren();
      empty.hidden = false;
      setText(empty, err.message);
      return;
    }
    empty.hidden = tokens.length > 0;
    setText(empty, "No API tokens. Create one for scripts and the CLI.");
    $("#tokens-body").replaceChildren(...tokens.map((t) => this.row(t)));
  }

  row(token) {
    const name = token.name || "(unnamed)";
    const revoke = h("button", { type: "button", class: "small danger", "aria-label": `Revoke ${name}` }, "Revoke");
    revoke.addEventListener("click", () => this.revoke(token, name));
    const expired = token.expires_at && Date.parse(token.expires_at) < Date.now();
    return h(
      "tr",
      { dataset: { id: token.id } },
      h("td", {}, name),
      h("td", { class: "mono" }, `${token.prefix}…`),
      h("td", {}, fmtTime(token.created_at)),
      h("td", { class: expired ? "expired" : "" }, token.expires_at ? fmtTime(token.expires_at) : "never"),
      h("td", {}, token.last_used_at ? fmtTime(token.last_used_at) : "never"),
      h("td", { class: "actions" }, revoke),
    );
  }

  async create(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const error = $("#token-name-error");
    error.hidden = true;
    const name = form.token_name.value.trim();
    if (name.length > 100) {
      error.hidden = false;
      setText(error, "Keep the name under 100 characters.");
      form.token_name.focus();
      return;
    }
    const days = Number(form.expires.value);
    const body = { name, expires_in_days: days > 0 ? days : null };
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const token = await api("POST", "/api/auth/tokens", { body, quiet: true });
      form.token_name.value = "";
      this.showNew(token);
      await this.load();
    } catch (err) {
      error.hidden = false;
      setText(error, err.message || "The token was not created.");
    } finally {
      button.disabled = false;
    }
  }

  showNew(token) {
    $("#token-new").hidden = false;
    $("#token-value").value = token.token;
    $("#token-value").select();
  }

  hideNew() {
    $("#token-value").value = "";
    $("#token-new").hidden = true;
  }

  async copy() {
    const field = $("#token-value");
    try {
      await navigator.clipboard.writeText(field.value);
      toast("Token copied to the clipboard", { kind: "info" });
    } catch {
      field.select();
      toast("Select the token and copy it with Ctrl+C", { kind: "info" });
    }
  }

  async revoke(token, name) {
    const { ok } = await confirmDialog({
      title: `Revoke ${name}?`,
      text: "Programs using this token stop working at once.",
      action: "Revoke",
    });
    if (!ok) return;
    try {
      await api("DELETE", `/api/auth/tokens/${encodeURIComponent(token.id)}`);
      toast(`Token ${name} revoked`, { kind: "info" });
    } catch {
      /* reported by api() */
    }
    await this.load();
  }

  /** Forget the shown token (sign-out). */
  clear() {
    this.hideNew();
    $("#tokens-body").replaceChildren();
  }
}
