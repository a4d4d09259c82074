"""``codehub workspaces list|start|stop``: through a running hub's API, as the owner of ``--token``.

Starting and stopping belong to the hub process that runs the engines, so these commands talk HTTP to it
(``--url``, default this machine's ``CODEHUB_PORT``) with an API token (``--token`` or ``CODEHUB_TOKEN``;
``codehub token <user>`` prints one). Admins may add ``--all`` to list everyone's workspaces.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx

from app.cli.common import CliError, cli_settings

PAGE = 200


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    settings = cli_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("CODEHUB_TOKEN", "")
    if not token:
        raise CliError("no API token", "pass --token or set CODEHUB_TOKEN (`codehub token <user>` prints one)")
    return httpx.Client(base_url=_base_url(args), headers={"Authorization": f"Bearer {token}"}, timeout=120)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        r = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise CliError(
            f"no hub answers at {client.base_url} ({type(exc).__name__})",
            "start it with `codehub serve`, or pass --url",
        ) from None
    if r.status_code == 401:
        raise CliError("the hub refused the token", "make one with `codehub token <user>` (--token or CODEHUB_TOKEN)")
    if r.status_code == 404 and "/workspaces/" in path:
        raise CliError(f"no workspace {path.split('/')[3]!r} of yours", "`codehub workspaces list` shows the ids")
    if r.status_code >= 400:
        try:
            body = r.json()
            detail = f"{body['detail']} ({r.status_code} {body['error']})"
        except (ValueError, KeyError, TypeError):
            detail = f"HTTP {r.status_code}"
        raise CliError(detail)
    return r.json()


def _all_pages(client: httpx.Client, everyone: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE, "all": "true" if everyone else "false"}
        if cursor:
            params["cursor"] = cursor
        page = _call(client, "GET", "/api/workspaces", params=params)
        items.extend(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def _resolve(client: httpx.Client, ref: str) -> str:
    """The id of the caller's workspace ``ref`` (an id, or the name of one of the caller's own)."""
    try:
        return str(_call(client, "GET", f"/api/workspaces/{ref}")["id"])
    except CliError:
        named = [ws for ws in _all_pages(client, False) if ws["name"] == ref]
        if len(named) != 1:
            raise
        return str(named[0]["id"])


def list_workspaces(args: argparse.Namespace) -> int:
    """Print the workspaces: id, name, state, owner, image."""
    with _client(args) as client:
        items = _all_pages(client, args.all)
    print(f"{'ID':<14} {'NAME':<24} {'STATE':<10} {'OWNER':>5}  IMAGE")
    for ws in items:
        print(f"{ws['id']:<14} {ws['name']:<24} {ws['state']:<10} {ws['owner_id']:>5}  {ws['image']}")
    return 0


def _transition(args: argparse.Namespace, action: str) -> int:
    params = {"wait": "true"} if getattr(args, "wait", False) else {}
    with _client(args) as client:
        workspace_id = _resolve(client, args.workspace)
        ws = _call(client, "POST", f"/api/workspaces/{workspace_id}/{action}", params=params)
    reason = f" ({ws['state_reason']})" if ws.get("state_reason") and ws["state"] == "failed" else ""
    print(f"{ws['id']} {ws['name']}: {ws['state']}{reason}")
    return 1 if ws["state"] == "failed" else 0


def start(args: argparse.Namespace) -> int:
    """Start a workspace by id or name (``--wait``: until it runs or fails)."""
    return _transition(args, "start")


def stop(args: argparse.Namespace) -> int:
    """Stop a workspace by id or name."""
    return _transition(args, "stop")


def add_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``workspaces``."""
    group = sub.add_parser(
        "workspaces",
        help="list, start or stop workspaces through the running hub",
        description="Talks to the running hub's API with an API token (--token or CODEHUB_TOKEN).",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--url", help="the hub (default http://127.0.0.1:$CODEHUB_PORT)")
    shared.add_argument("--token", help="API token (default $CODEHUB_TOKEN)")
    listing = actions.add_parser("list", parents=[shared], help="my workspaces (--all: everyone's, admins)")
    listing.add_argument("--all", action="store_true", help="everyone's workspaces (admins)")
    listing.set_defaults(func=list_workspaces)
    starting = actions.add_parser("start", parents=[shared], help="start a workspace")
    starting.add_argument("workspace", help="id, or the name of one of your workspaces")
    starting.add_argument("--wait", action="store_true", help="return once it runs (or failed)")
    starting.set_defaults(func=start)
    stopping = actions.add_parser("stop", parents=[shared], help="stop a workspace")
    stopping.add_argument("workspace", help="id, or the name of one of your workspaces")
    stopping.set_defaults(func=stop)
