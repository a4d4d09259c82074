"""The small HTML pages the relay answers with itself: starting, failed, not found, sign in, bad gateway.

No stack traces and no framework: each page is a few hundred bytes of HTML with a strict CSP (the starting
page's one script runs under a nonce). The starting page follows the workspace's lifecycle over SSE
(``/api/workspaces/{id}/events``, with a slow poll of ``/api/workspaces/{id}`` as a fallback) and reloads
when the workspace is running, failed or stopped; the reload then shows the IDE or the failure.
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlencode

Send = Callable[[dict[str, Any]], Awaitable[None]]

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:44rem;margin:4rem auto;padding:0 1rem;color:#1d2330}"
    "h1{font-size:1.4rem}pre{background:#f3f4f6;padding:.75rem;overflow:auto;font-size:12px;white-space:pre-wrap}"
    ".muted{color:#5b6472}button{font:inherit;padding:.3rem .9rem}a{color:#2457c5}"
)
_LIFECYCLE_TYPES = (
    "workspace.starting",
    "workspace.progress",
    "workspace.placed",
    "workspace.running",
    "workspace.failed",
    "workspace.stopping",
    "workspace.stopped",
    "workspace.deleted",
    "workspace.updated",
    "clone.progress",
    "message",
)

_STARTING_SCRIPT = """
(() => {
  const id = %(id)s;
  const status = document.getElementById("status");
  let done = false;
  const finish = () => { if (!done) { done = true; location.reload(); } };
  const onState = (state) => {
    if (state === "running" || state === "failed" || state === "stopped" || state === "deleted") finish();
  };
  const handle = (e) => {
    let ev;
    try { ev = JSON.parse(e.data); } catch { return; }
    const d = ev.data || {};
    if (ev.type === "workspace.progress" && d.step) status.textContent = `${d.step}${d.status ? ": " + d.status : ""}`;
    if (ev.type === "clone.progress" && d.phase) status.textContent = `cloning: ${d.phase} ${d.percent || 0}%%`;
    if (d.state) onState(d.state);
  };
  const poll = async () => {
    try {
      const r = await fetch(`/api/workspaces/${id}`, {credentials: "same-origin"});
      if (r.ok) onState((await r.json()).state); else if (r.status === 404) finish();
    } catch {}
  };
  const es = new EventSource(`/api/workspaces/${id}/events`);
  for (const t of %(types)s) es.addEventListener(t, handle);
  es.addEventListener("stream.reset", poll);
  es.onopen = poll;
  setInterval(poll, 4000);
})();
"""

_FAILED_SCRIPT = """
document.getElementById("retry").addEventListener("click", async (e) => {
  e.target.disabled = true;
  await fetch(`/api/workspaces/${%(id)s}/start`, {method: "POST", credentials: "same-origin"});
  location.reload();
});
"""


def _page(title: str, body: str, nonce: str = "") -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)} · code-hub</title><style>{_STYLE}</style></head><body>{body}"
        '<p class="muted"><a href="/">code-hub dashboard</a></p></body></html>'
    ).encode()


def _headers(body: bytes, nonce: str, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    script = f" 'nonce-{nonce}'" if nonce else " 'none'"
    csp = (
        f"default-src 'none'; style-src 'unsafe-inline'; script-src{script}; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
    )
    return [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", csp.encode()),
        *extra,
    ]


async def send_page(
    send: Send, status: int, title: str, body_html: str, *, nonce: str = "", extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer an HTTP request with a small page."""
    body = _page(title, body_html, nonce)
    await send({"type": "http.response.start", "status": status, "headers": _headers(body, nonce, list(extra))})
    await send({"type": "http.response.body", "body": body})


async def not_found(send: Send) -> None:
    """404: unknown workspace, or one the caller may not see (the same answer, on purpose)."""
    await send_page(send, 404, "Not found", "<h1>No such workspace</h1><p>It does not exist or is not yours.</p>")


async def not_yours(send: Send) -> None:
    """403: an admin opening another user's IDE, which path mode does not isolate."""
    await send_page(
        send,
        403,
        "Not your workspace",
        "<h1>This workspace is not yours</h1><p>Its pages would run on the hub's own origin with your admin "
        "session. Admins open other users' workspaces only when the hub runs with "
        "<code>CODEHUB_ADMIN_PATH_ACCESS=true</code> (audited as impersonation) or with a workspace domain.</p>",
    )


async def sign_in(send: Send, next_path: str) -> None:
    """401: no valid credentials; the dashboard's sign-in brings the browser back to ``next_path``."""
    login = html.escape("/?" + urlencode({"next": next_path}))
    await send_page(
        send,
        401,
        "Sign in",
        f'<h1>Sign in first</h1><p><a href="{login}">Sign in</a>; you will come back here.</p>',
        extra=[(b"www-authenticate", b"Bearer")],
    )


async def bad_gateway(send: Send, detail: str, *, status: int = 502) -> None:
    """502 (504 on timeouts): the IDE did not answer."""
    await send_page(
        send,
        status,
        "IDE not answering",
        "<h1>The workspace's IDE is not answering</h1>"
        f'<p class="muted">{html.escape(detail)}</p><p>Reload in a moment; if it persists, restart the workspace '
        "from the dashboard.</p>",
    )


async def not_running(send: Send, state: str) -> None:
    """503 for a sub-request (asset, XHR) while the workspace is not running."""
    await send_page(
        send,
        503,
        "Not running",
        f"<h1>The workspace is {html.escape(state)}</h1>",
        extra=[(b"retry-after", b"2")],
    )


async def starting(send: Send, workspace_id: str, name: str, state: str, note: str = "") -> None:
    """The starting page: follows the lifecycle and reloads once the workspace is running (or failed)."""
    nonce = secrets.token_urlsafe(12)
    script = _STARTING_SCRIPT % {"id": json.dumps(workspace_id), "types": json.dumps(list(_LIFECYCLE_TYPES))}
    body = (
        f"<h1>Starting {html.escape(name or workspace_id)}…</h1>"
        f'<p id="status" class="muted">{html.escape(state)}</p>'
        + (f'<p class="muted">{html.escape(note)}</p>' if note else "")
        + "<p>This page reloads by itself when the workspace is ready.</p>"
        f'<script nonce="{nonce}">{script}</script>'
    )
    await send_page(send, 503, f"Starting {name}", body, nonce=nonce, extra=[(b"retry-after", b"2")])


async def failed(send: Send, workspace_id: str, name: str, reason: str | None) -> None:
    """The failure page: the reason (with the IDE's last output lines) and a button to start again."""
    nonce = secrets.token_urlsafe(12)
    body = (
        f"<h1>{html.escape(name or workspace_id)} failed</h1>"
        f"<pre>{html.escape(reason or 'no reason recorded')}</pre>"
        '<p><button id="retry">Start again</button></p>'
        f'<script nonce="{nonce}">{_FAILED_SCRIPT % {"id": json.dumps(workspace_id)}}</script>'
    )
    await send_page(send, 503, f"{name} failed", body, nonce=nonce)


async def redirect(
    send: Send, location: bytes, *, status: int = 302, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A redirect with an empty body."""
    headers = [(b"location", location), (b"content-length", b"0"), (b"cache-control", b"no-store"), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
