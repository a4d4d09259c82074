// The dashboard's entry point: session (login/logout), tabs, the one event stream, and wiring.

import { Audit } from "./audit.js";
import { api, onUnauthorized } from "./api.js";
import { Details } from "./details.js";
import { EditDialog } from "./edit.js";
import { EventStream } from "./events.js";
import { Groups } from "./groups.js";
import { Servers } from "./servers.js";
import { TerminalPane } from "./termpane.js";
import { Tokens } from "./tokens.js";
import { Users } from "./users.js";
import { $, $$, setText, toast } from "./ui.js";
import { WorkspaceList } from "./workspaces.js";

const FALLBACK_POLL_MS = 5000;
const LIVE_TEXT = { live: "live", connecting: "connecting…", down: "offline", unavailable: "polling", off: "offline" };

/** `target` when it is a path on this origin (as the hub's own check: no "//", no backslash), else null. */
function ownPath(target) {
  if (!target || !target.startsWith("/") || target.startsWith("//") || target.includes("\\")) return null;
  try {
    const url = new URL(target, location.origin);
    return url.origin === location.origin && url.pathname !== "/" ? url.pathname + url.search + url.hash : null;
  } catch {
    return null;
  }
}

class App {
  constructor() {
    this.me = null;
    this.isAdmin = false;
    this.showAll = localStorage.getItem("codehub.showAll") === "1";
    this.selected = null;
    this.liveState = "off";
    this.pollTimer = null;
    this.workspaces = new WorkspaceList(this);
    this.details = new Details(this);
    this.terminal = new TerminalPane(this);
    this.edit = new EditDialog(this);
    this.servers = new Servers();
    this.groups = new Groups();
    this.audit = new Audit(this);
    this.tokens = new Tokens();
    this.users = new Users(this);
    this.stream = new EventStream(
      (ev) => this.onEvent(ev),
      (state, detail) => this.onLiveState(state, detail),
    );
    $("#login-form").addEventListener("submit", (e) => this.login(e));
    $("#logout").addEventListener("click", () => this.logout());
    $("#all-toggle").addEventListener("change", (e) => {
      this.showAll = e.target.checked;
      localStorage.setItem("codehub.showAll", this.showAll ? "1" : "0");
      $(".owner-col").hidden = !this.showAll;
      this.workspaces.load();
    });
    window.addEventListener("hashchange", () => this.route());
    onUnauthorized(() => this.sessionEnded());
  }

  async boot() {
    this.showMethods(); // logout needs to know whether the provider signs out too
    try {
      const me = await api("GET", "/api/auth/me", { quiet: true });
      // Already signed in (another tab did it): go on where the link was going, if it stays on this hub.
      const next = ownPath(new URLSearchParams(location.search).get("next"));
      if (next) {
        location.replace(next);
        return;
      }
      this.signedIn(me);
    } catch (err) {
      if (err.status !== 401) toast(err.message, { title: "The hub did not answer" });
      this.showLogin();
    }
  }

  // The sign-in methods this hub offers: a "Sign in with <provider>" link (keeping ?next=), the password form
  // unless it is turned off.
  async showMethods() {
    this.methodsLoading ||= api("GET", "/api/auth/methods", { quiet: true }).catch(() => ({ password: true, oidc: null }));
    this.methods = await this.methodsLoading;
    const { password, oidc } = this.methods;
    $("#sso-block").hidden = !oidc;
    if (oidc) {
      const link = $("#sso-login");
      const next = new URLSearchParams(location.search).get("next") || location.hash || "";
      link.href = next ? `${oidc.login_url}?next=${encodeURIComponent(next.startsWith("#") ? `/${next}` : next)}` : oidc.login_url;
      setText(link, `Sign in with ${oidc.name}`);
    }
    $("#sso-or").hidden = !password;
    $("#password-fields").hidden = !password;
    $("#login-submit").hidden = !password;
    if (oidc && !password) $("#sso-login").focus();
  }

  showLogin(message = "") {
    this.showMethods();
    this.me = null;
    document.body.dataset.view = "login";
    $("#session").hidden = true;
    $("#tabs").hidden = true;
    for (const v of $$(".view")) v.hidden = true;
    $("#login-view").hidden = false;
    const error = $("#login-error");
    error.hidden = !message;
    setText(error, message);
    $("#login-username").focus();
  }

  async login(e) {
    e.preventDefault();
    const form = e.currentTarget;
    const error = $("#login-error");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    error.hidden = true;
    try {
      const next = new URLSearchParams(location.search).get("next");
      const r = await api("POST", "/api/auth/login", {
        body: { username: form.username.value, password: form.password.value, next },
        quiet: true,
      });
      form.password.value = "";
      // The hub judged `next` (a path on this origin, else "/"): go back where the person was going.
      if (next && r.next !== "/") {
        location.assign(r.next);
        return;
      }
      if (next) history.replaceState(null, "", location.pathname + location.hash);
      this.signedIn(r.user);
    } catch (err) {
      error.hidden = false;
      setText(error, err.message || "Sign-in failed");
      form.password.select();
    } finally {
      button.disabled = false;
    }
  }

  async logout() {
    try {
      if (this.methods?.oidc) {
        // single sign-on: the hub says whether the provider's end-session page comes next
        const r = await api("POST", "/api/auth/oidc/logout", { quiet: true });
        if (r.redirect && r.redirect !== "/") {
          location.assign(r.redirect);
          return;
        }
      } else {
        await api("POST", "/api/auth/logout", { quiet: true });
      }
    } catch {
      /* the session may already be gone */
    }
    this.signedOut();
    this.showLogin();
  }

  sessionEnded() {
    if (!this.me) return;
    this.signedOut();
    this.showLogin("Your session ended. Sign in again.");
  }

  signedOut() {
    this.stream.stop();
    clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.select(null);
    this.workspaces.clear();
    this.tokens.clear();
    this.users.clear();
    this.me = null;
  }

  async showWarnings() {
    const banner = $("#isolation-warning");
    try {
      const ready = await api("GET", "/ready", { quiet: true });
      const warnings = ready.warnings || [];
      setText(banner, warnings.join(" "));
      banner.hidden = warnings.length === 0;
    } catch {
      banner.hidden = true; // /ready failing is shown elsewhere; the warning needs its answer
    }
  }

  signedIn(user) {
    this.me = user;
    this.isAdmin = user.role === "admin";
    document.body.dataset.view = "app";
    document.body.classList.toggle("is-admin", this.isAdmin);
    $("#login-view").hidden = true;
    $("#session").hidden = false;
    $("#tabs").hidden = false;
    setText($("#whoami"), `${user.username}${this.isAdmin ? " (admin)" : ""}`);
    this.showWarnings();
    for (const el of $$("[data-admin]")) el.hidden = !this.isAdmin;
    $("#all-toggle-wrap").hidden = !this.isAdmin;
    $("#all-toggle").checked = this.isAdmin && this.showAll;
    $(".owner-col").hidden = !(this.isAdmin && this.showAll);
    this.updateTopics();
    this.workspaces.load();
    this.route();
  }

  route() {
    if (!this.me) return;
    let tab = (location.hash || "#workspaces").slice(1);
    const adminOnly = ["servers", "users", "groups"];
    if (!["workspaces", "audit", "tokens", ...adminOnly].includes(tab) || (adminOnly.includes(tab) && !this.isAdmin)) tab = "workspaces";
    for (const v of $$(".view")) v.hidden = v.dataset.view !== tab;
    for (const a of $$("#tabs a")) {
      if (a.dataset.tab === tab) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (tab === "servers") this.servers.load();
    if (tab === "audit") this.audit.load();
    if (tab === "groups") this.groups.load();
    if (tab === "tokens") this.tokens.load();
    if (tab === "users") this.users.load();
  }

  topics() {
    if (!this.me) return [];
    const logs = this.details.logs.topic();
    return [this.isAdmin ? "admin" : `user:${this.me.id}`, ...(logs ? [logs] : [])];
  }

  updateTopics() {
    if (this.me) this.stream.setTopics(this.topics());
  }

  select(id) {
    const previous = this.selected;
    this.selected = id;
    this.terminal.selected(id);
    for (const rowId of [previous, id]) if (rowId) this.workspaces.renderRow(rowId);
    this.details.show(id);
    this.updateTopics();
  }

  onWorkspaceChanged(ws) {
    this.details.workspaceChanged(ws);
  }

  onWorkspaceRemoved(id) {
    if (this.selected === id) this.select(null);
  }

  onEvent(ev) {
    if (ev.type === "stream.reset") {
      this.workspaces.load();
      this.details.resync();
      return;
    }
    if (ev.type === "log.line") {
      this.details.logs.handleEvent(ev);
      return;
    }
    if (ev.type === "workspace.access_changed") this.details.sharing.changed((ev.data || {}).workspace_id);
    this.workspaces.handleEvent(ev);
  }

  onLiveState(state, detail) {
    const was = this.liveState;
    this.liveState = state;
    const live = $("#live");
    live.dataset.state = state;
    setText($("#live-text"), LIVE_TEXT[state] || state);
    live.title = detail || "Live event stream";
    if (state === "down" && detail && was !== "down") toast(detail, { title: "Live updates interrupted" });
    if (state === "live" && was !== "live" && was !== "connecting" && was !== "off") this.workspaces.load();
    if (state === "live") this.details.logs.streamLive();
    if (state === "unavailable" && !this.pollTimer) {
      this.pollTimer = setInterval(() => this.workspaces.load(), FALLBACK_POLL_MS);
    } else if (state === "live" && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = null;
    }
  }
}

const app = new App();
window.codehub = app; // for debugging in the console
app.boot();
