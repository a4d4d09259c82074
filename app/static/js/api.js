// The JSON API client: same-origin fetch with the session cookie; errors carry the hub's {error, detail}.

import { toast } from "./ui.js";

export class ApiError extends Error {
  constructor(status, body, requestId) {
    const detail = body && (body.detail || body.error) ? body.detail || body.error : `HTTP ${status}`;
    // validation messages name the pattern a value missed: people get the field's name without it
    super(String(detail).replace(/ matching regex '.*?'/g, " in the expected form"));
    this.status = status;
    this.code = (body && body.error) || `http_${status}`;
    this.body = body || {};
    this.requestId = requestId;
  }
}

const listeners = { unauthorized: [] };

/** Called (once per burst) when a request answers 401: the session ended. */
export function onUnauthorized(fn) {
  listeners.unauthorized.push(fn);
}

/** fetch + JSON; throws ApiError on non-2xx. `quiet` skips the toast (callers handle the error). */
export async function api(method, path, { body, query, quiet = false, signal } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === "" || v === false) continue;
      for (const item of Array.isArray(v) ? v : [v]) params.append(k, String(item));
    }
    const qs = params.toString();
    if (qs) url += (url.includes("?") ? "&" : "?") + qs;
  }
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    const e = new ApiError(0, { error: "network", detail: "the hub does not answer (network error)" });
    if (!quiet) report(e, method, path);
    throw e;
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: `http_${response.status}`, detail: text.slice(0, 300) };
    }
  }
  if (!response.ok) {
    const e = new ApiError(response.status, data, response.headers.get("x-request-id"));
    if (response.status === 401 && !path.startsWith("/api/auth/login")) {
      for (const fn of listeners.unauthorized) fn(e);
      throw e;
    }
    if (!quiet) report(e, method, path);
    throw e;
  }
  return data;
}

/** Show an API error to the person: the hub's detail, its code and the request id. */
export function report(err, method = "", path = "") {
  if (!(err instanceof ApiError)) {
    toast(String(err && err.message ? err.message : err));
    return;
  }
  const what = method ? `${method} ${path.split("?")[0]}` : "";
  const extra = err.requestId ? ` (request ${err.requestId.slice(0, 12)})` : "";
  toast(`${err.message}${extra}`, { title: `${err.code}${what ? ` — ${what}` : ""}` });
}

/** GET every page of a cursor-paginated list ({items, next_cursor}), up to `max` items. */
export async function getAll(path, query = {}, max = 1000) {
  const items = [];
  let cursor = null;
  do {
    const page = await api("GET", path, { query: { ...query, cursor } });
    const rows = Array.isArray(page) ? page : page.items || [];
    items.push(...rows);
    cursor = Array.isArray(page) ? null : page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
