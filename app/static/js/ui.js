// DOM and formatting helpers, toasts and the confirm dialog. Text always goes in through textContent.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** Build an element: h("td", {class: "x", onclick: f}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function setText(el, text) {
  const value = text === undefined || text === null ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

/** Show an error (or info) toast; errors stay until dismissed or 12 s pass. */
export function toast(message, { kind = "error", title = null, timeout = null } = {}) {
  const box = $("#toasts");
  const close = h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×");
  const el = h(
    "div",
    { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("div", { class: "toast-body" }, title ? h("strong", {}, title) : null, h("span", {}, message)),
    close,
  );
  const remove = () => el.remove();
  close.addEventListener("click", remove);
  box.append(el);
  while (box.children.length > 5) box.firstElementChild.remove();
  setTimeout(remove, timeout ?? (kind === "error" ? 12000 : 4000));
  return el;
}

/** Tell screen-reader users about a change they did not cause (a workspace became running). */
export function announce(text) {
  const el = $("#announcer");
  el.textContent = "";
  setTimeout(() => (el.textContent = text), 50);
}

/** Ask for confirmation in the modal dialog; resolves {ok, extra}. */
export function confirmDialog({ title, text, action = "Delete", extra = null }) {
  const dialog = $("#confirm");
  setText($("#confirm-title"), title);
  setText($("#confirm-text"), text);
  setText($("#confirm-ok"), action);
  $("#confirm-extra-wrap").hidden = !extra;
  $("#confirm-extra").checked = false;
  if (extra) setText($("#confirm-extra-text"), extra);
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve({ ok: dialog.returnValue === "ok", extra: $("#confirm-extra").checked }),
      { once: true },
    );
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

export function fmtBytes(n) {
  if (n === undefined || n === null || Number.isNaN(Number(n))) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtDuration(seconds) {
  if (seconds === undefined || seconds === null || Number.isNaN(Number(seconds))) return "–";
  let s = Math.max(0, Math.floor(Number(seconds)));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hh = Math.floor(s / 3600);
  s -= hh * 3600;
  const mm = Math.floor(s / 60);
  s -= mm * 60;
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${s}s`;
  return `${s}s`;
}

export function parseTime(value) {
  if (!value) return null;
  const t = Date.parse(value);
  return Number.isNaN(t) ? null : t;
}

export function fmtTime(value) {
  const t = parseTime(value);
  if (t === null) return "–";
  return new Date(t).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function fmtAgo(value) {
  const t = parseTime(value);
  if (t === null) return "–";
  const s = (Date.now() - t) / 1000;
  return s < 0 ? `in ${fmtDuration(-s)}` : `${fmtDuration(s)} ago`;
}

/** First defined value among the dotted paths of obj: pick(o, "cpu_percent", "resources.cpu_percent"). */
export function pick(obj, ...paths) {
  for (const path of paths) {
    let v = obj;
    for (const part of path.split(".")) {
      if (v === undefined || v === null) break;
      v = v[part];
    }
    if (v !== undefined && v !== null) return v;
  }
  return undefined;
}
