"""ASGI app for bench/api.py: the real hub, plus a trivial Litestar JSON route in a second, bare Litestar app
on the same server (the framework's ceiling). Production code has no bench route: the split happens here.

Run as ``python -m bench._api_app``: served like ``codehub serve`` serves the hub (its uvicorn options and GC
tuning), on ``CODEHUB_HOST``/``CODEHUB_PORT``; the hub reads its CODEHUB_* environment.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, get

from app.cli.server import uvicorn_options
from app.factory import create_app
from app.settings import load_settings
from app.streams.events.hub import tune_gc_for_streaming

TRIVIAL_PATH = "/bench/trivial"


@get(TRIVIAL_PATH, sync_to_thread=False)
def trivial() -> dict[str, Any]:
    """A constant small JSON object."""
    return {"ok": True, "items": [1, 2, 3]}


def create() -> Any:
    """The hub for every path but ``TRIVIAL_PATH``, which a bare Litestar app answers."""
    hub = create_app()
    bare = Litestar(route_handlers=[trivial], openapi_config=None, logging_config=None)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == TRIVIAL_PATH:
            await bare(scope, receive, send)
        else:
            await hub(scope, receive, send)

    return app


def main() -> None:
    """Serve ``create()`` as ``codehub serve`` serves the hub."""
    import uvicorn

    tune_gc_for_streaming()
    uvicorn.run(create(), **uvicorn_options(load_settings()))


if __name__ == "__main__":
    main()
