"""One Kubernetes namespace, through kr8s: credentials from a kubeconfig file or the pod's service account.

The runtime speaks the core/v1 and networking/v1 REST paths itself (``request``, ``stream``, ``websocket``);
kr8s loads the credentials (token, client certificate, CA), keeps one httpx client with them and retries
once with fresh ones on a 401. Errors become the hub's: the API unreachable is ``RuntimeUnavailable``
(503), an answer the runtime did not expect is ``KubeError`` (502) with the API's message.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx_ws
import kr8s
import kr8s.asyncio

from app.errors import BadGateway
from app.services.runtime.base import EngineInfo, RuntimeUnavailable

IN_CLUSTER = "in-cluster"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_KUBECONFIG: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": IN_CLUSTER,
    "contexts": [{"name": IN_CLUSTER, "context": {"cluster": "", "user": ""}}],
    "clusters": [],
    "users": [],
}
"""A context without a cluster: kr8s then takes the service account (never KUBECONFIG or ~/.kube/config)."""


class KubeError(BadGateway):
    """The API server answered with an error the runtime did not expect."""

    default_code = "kubernetes_error"

    def __init__(self, detail: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(detail)
        self.api_status, self.reason = status, reason


def _error_of(response: httpx.Response) -> KubeError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    return KubeError(
        f"Kubernetes API: {message or response.reason_phrase} ({response.status_code})",
        status=response.status_code,
        reason=str(reason),
    )


class KubeConnection:
    """The API server of one cluster, scoped to ``namespace`` (``kubeconfig``: a path or ``in-cluster``)."""

    def __init__(self, kubeconfig: str, namespace: str, *, context: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace or "default"
        self.context = context
        self._api: Any = None
        self._lock = anyio.Lock()

    @property
    def label(self) -> str:
        """Where this connection points, for messages (never a credential)."""
        return f"{self.kubeconfig}#{self.namespace}"

    async def api(self) -> Any:
        """The kr8s client, loading the credentials on first use."""
        if self._api is not None:
            return self._api
        async with self._lock:
            if self._api is None:
                if self.kubeconfig == IN_CLUSTER:
                    kwargs: dict[str, Any] = {"kubeconfig": dict(NO_KUBECONFIG), "serviceaccount": SERVICE_ACCOUNT}
                else:
                    kwargs = {"kubeconfig": self.kubeconfig, "context": self.context}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # kr8s warns about versions it was not tested with
                        self._api = await kr8s.asyncio.api(namespace=self.namespace, **kwargs)
                except (ValueError, OSError, httpx.HTTPError, kr8s.ServerError) as exc:
                    raise RuntimeUnavailable(
                        f"the Kubernetes API of {self.label} does not answer: {exc}", code="kubernetes_unavailable"
                    ) from exc
        return self._api

    def path(self, resource: str, name: str = "", *, group: str = "api/v1") -> str:
        """The namespaced REST path of ``resource`` (and one object of it)."""
        base = f"/{group}/namespaces/{self.namespace}/{resource}"
        return f"{base}/{name}" if name else base

    @asynccontextmanager
    async def _call(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> AsyncIterator[Any]:
        """One call on kr8s's client; a 401 loads the credentials again (rotated tokens) and retries once."""
        api = await self.api()
        try:
            for attempt in range(2):
                client = await _session(api)
                request = client.build_request(method, path, **kwargs)
                response = await client.send(request, stream=stream)
                try:
                    if response.status_code == 401 and attempt == 0:
                        await api.auth.reauthenticate()
                        await api._create_session()
                        continue
                    yield response
                    return
                finally:
                    await response.aclose()
        except (httpx.TransportError, OSError) as exc:
            raise RuntimeUnavailable(
                f"the Kubernetes API of {self.label} does not answer: {exc}", code="kubernetes_unavailable"
            ) from exc

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        missing_ok: bool = False,
        patch: bool = False,
    ) -> Any:
        """One call; the decoded JSON answer (None for a 404 when ``missing_ok``), ``KubeError`` otherwise."""
        kwargs: dict[str, Any] = {"params": params or {}}
        if body is not None:
            kwargs["json"] = body
        if patch:
            kwargs["headers"] = {"content-type": "application/merge-patch+json"}
        async with self._call(method, path, **kwargs) as response:
            if response.status_code == 404 and missing_ok:
                return None
            if response.is_error:
                raise _error_of(response)
            return response.json() if response.content else None

    async def text(self, path: str, *, params: dict[str, Any] | None = None) -> str:
        """A plain-text answer (a pod's log)."""
        async with self._call("GET", path, params=params or {}) as response:
            if response.is_error:
                raise _error_of(response)
            return str(response.text)

    @asynccontextmanager
    async def stream(self, path: str, *, params: dict[str, Any] | None = None) -> AsyncIterator[httpx.Response]:
        """A streamed GET (a watch, a followed log) without a read timeout."""
        timeout = httpx.Timeout(10, read=None)
        async with self._call("GET", path, params=params or {}, stream=True, timeout=timeout) as response:
            if response.is_error:
                await response.aread()
                raise _error_of(response)
            yield response

    async def watch(self, path: str, params: dict[str, Any]) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """The changes of a watch (``ADDED``, ``MODIFIED``, ``DELETED``, and the object), bookmarks left out,
        until the API server ends it; an ``ERROR`` change (410 Gone included) raises ``KubeError``."""
        async with self.stream(path, params={**params, "watch": "1"}) as response:
            async for line in response.aiter_lines():
                if not line:
                    continue
                change = json.loads(line)
                kind, obj = change.get("type"), change.get("object") or {}
                if kind == "ERROR":
                    detail = f"Kubernetes watch: {obj.get('message', 'error')}"
                    raise KubeError(detail, status=int(obj.get("code") or 0))
                if kind != "BOOKMARK":
                    yield str(kind), obj

    @asynccontextmanager
    async def websocket(
        self, path: str, params: list[tuple[str, str]], *, protocols: tuple[str, ...]
    ) -> AsyncIterator[httpx_ws.AsyncWebSocketSession]:
        """A WebSocket to ``path`` (``pods/exec``) speaking one of ``protocols``."""
        api = await self.api()
        client = await _session(api)
        try:
            connecting: Any = httpx_ws.aconnect_ws(
                path, client, params=params, subprotocols=list(protocols), keepalive_ping_interval_seconds=None
            )
            async with connecting as ws:
                yield ws
        except httpx_ws.WebSocketUpgradeError as exc:
            raise _error_of(exc.response) from exc
        except (httpx.TransportError, OSError) as exc:
            raise RuntimeUnavailable(
                f"the Kubernetes API of {self.label} does not answer: {exc}", code="kubernetes_unavailable"
            ) from exc

    async def version(self) -> dict[str, Any]:
        """The API server's ``/version``."""
        answer = await self.request("GET", "/version")
        return dict(answer or {})

    async def info(self) -> EngineInfo:
        """Version and round-trip time of the API server, or why it does not answer."""
        begin = time.perf_counter()
        try:
            with anyio.fail_after(10):
                version = await self.version()
        except (RuntimeUnavailable, KubeError, TimeoutError) as exc:
            return EngineInfo(ok=False, error=str(exc) or type(exc).__name__)
        return EngineInfo(
            ok=True,
            version=str(version.get("gitVersion", "")),
            api_version=f"{version.get('major', '')}.{version.get('minor', '')}",
            latency_ms=round((time.perf_counter() - begin) * 1000, 2),
        )

    async def close(self) -> None:
        """Close the client (kr8s keeps one per loop and arguments; the next use opens it again)."""
        api, self._api = self._api, None
        session = getattr(api, "_session", None) if api is not None else None
        if session is not None:
            with anyio.CancelScope(shield=True):
                await session.aclose()


async def _session(api: Any) -> httpx.AsyncClient:
    """kr8s's httpx client with the credentials (created on its first call)."""
    if api._session is None or api._session.is_closed:
        await api._create_session()
    client: httpx.AsyncClient = api._session
    return client
