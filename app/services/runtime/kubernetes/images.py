"""Images on a cluster's nodes: which nodes hold one (the kubelet's ``.status.images``), and pre-pulls.

An image is on a server when every schedulable node holds it (a workspace pod may land on any of them and,
with pulling off, runs only an image its node has). A pre-pull starts one short-lived pod per node that
lacks the image, pinned to that node (``nodeName``), with ``imagePullPolicy: IfNotPresent`` and the
command ``true``: once its container was created or ran, the image is there. Nodes are cluster-scoped:
without the right to list them the hub cannot tell, and leaves it to the start (``has_image`` says yes).
"""

from __future__ import annotations

import logging
import time

import anyio

from app.services.runtime.base import ImageNotFound, Progress
from app.services.runtime.kubernetes import manifests, states
from app.services.runtime.kubernetes.connection import KubeConnection, KubeError

log = logging.getLogger(__name__)
PULL_TIMEOUT = 600.0
PULLED = ("CreateContainerError", "CreateContainerConfigError", "RunContainerError")
"""Waiting reasons that come after the image is on the node (the image lacks ``true``, say)."""


def reference(image: str) -> str:
    """``image`` spelled as nodes report it: registry, repository and tag (``docker.io``, ``library/`` and
    ``latest`` filled in)."""
    name, digest = image.split("@", 1) if "@" in image else (image, "")
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = "" if digest else "latest"
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name if rest else 'library/' + name}"
    return f"{name}@{digest}" if digest else f"{name}:{tag}"


async def nodes_lacking(conn: KubeConnection, image: str) -> list[str] | None:
    """The schedulable nodes that do not hold ``image`` (None: the hub may not list nodes)."""
    try:
        found = await conn.request("GET", "/api/v1/nodes")
    except KubeError as exc:
        if exc.api_status == 403:
            log.warning("cannot list the nodes of %s to look for image %s: %s", conn.label, image, exc.detail)
            return None
        raise
    wanted = reference(image)
    lacking = []
    for node in (found or {}).get("items") or []:
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        held = {reference(n) for entry in (node.get("status") or {}).get("images") or [] for n in entry["names"]}
        if wanted not in held:
            lacking.append(node["metadata"]["name"])
    return lacking


async def pull(
    conn: KubeConnection,
    image: str,
    hub_id: str,
    user: tuple[int, int],
    progress: Progress | None,
    *,
    nodes: list[str] | None = None,
) -> None:
    """Pull ``image`` onto ``nodes`` (default: every schedulable node that lacks it), one pull pod per node,
    reporting ``("pull", {...})`` steps; ``ImageNotFound`` naming the node and the kubelet's reason when one
    fails."""
    lacking = nodes if nodes is not None else await nodes_lacking(conn, image)
    if lacking is None:
        raise ImageNotFound(f"image {image}: the hub may not list the cluster's nodes, so it cannot pre-pull")
    failures: list[str] = []

    async def one(node: str) -> None:
        try:
            await _pull_on(conn, image, node, hub_id, user, progress)
        except ImageNotFound as exc:
            failures.append(exc.detail)

    async with anyio.create_task_group() as tg:
        for node in lacking:
            tg.start_soon(one, node)
    if failures:
        raise ImageNotFound("; ".join(failures))
    if progress:
        await progress("pull", {"image": image, "status": "done", "nodes": lacking})


async def _pull_on(
    conn: KubeConnection, image: str, node: str, hub_id: str, user: tuple[int, int], progress: Progress | None
) -> None:
    body = manifests.pull_manifest(image, hub_id, node=node, user=user, lifetime=int(PULL_TIMEOUT))
    made = await conn.request("POST", conn.path("pods"), body=body)
    name = made["metadata"]["name"]
    last = ""
    try:
        deadline = time.monotonic() + PULL_TIMEOUT
        while time.monotonic() < deadline:
            pod = await conn.request("GET", conn.path("pods", name))
            status = states.ide_status(pod, manifests.PULL_CONTAINER)
            state = status.get("state") or {}
            waiting = state.get("waiting") or {}
            reason, message = waiting.get("reason", ""), waiting.get("message", "")
            if "running" in state or "terminated" in state or reason in PULLED:
                return
            if reason in states.PULL_FAILURES:
                raise ImageNotFound(f"image {image} is not on node {node} and pulling it failed: {reason}: {message}")
            step = reason or (pod.get("status") or {}).get("phase", "Pending")
            if progress and step != last:
                last = step
                await progress("pull", {"image": image, "node": node, "status": step})
            await anyio.sleep(0.5)
        raise ImageNotFound(f"image {image} was not pulled on node {node} within {PULL_TIMEOUT:g} s")
    finally:
        with anyio.CancelScope(shield=True):
            await conn.request("DELETE", conn.path("pods", name), body={"gracePeriodSeconds": 0}, missing_ok=True)
