"""Starting a workspace pod: claim, policy and pod, then the way to Running told as progress, then readiness.

Steps reported through ``progress``: ``created`` (the pod's uid), then each change of ``scheduling``,
``volume`` (a claim waiting to bind, ``WaitForFirstConsumer`` included), ``pulling`` and ``creating`` with
the scheduler's or kubelet's message, ``container_started`` (running, the project directory made), and
readiness as the hub's own probe of
``http://<pod IP>:<port>/healthz`` (the same check as the Docker runtime): the relay dials the pod IP, so
the start does not wait for the kubelet's readiness probe, whose first try comes up to ``periodSeconds``
after the container runs (the prober's random initial delay).
A pending pod that stays pending fails the start with why: unschedulable, a claim not bound, an image that
cannot be pulled.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import anyio

from app.services.runtime import common
from app.services.runtime.base import (
    Endpoint,
    ImageNotFound,
    Progress,
    RuntimeUnavailable,
    StartFailed,
    WorkspaceSpec,
)
from app.services.runtime.common import ProcessExited, wait_until_ready
from app.services.runtime.kubernetes import states
from app.services.runtime.kubernetes.connection import KubeError
from app.services.runtime.kubernetes.manifests import IDE_CONTAINER, pod_manifest, project_dir

# the runtime (``KubernetesRuntime``) is passed in untyped: importing it here would make an import cycle
KubernetesRuntime = Any

EVENTS_EVERY = 1  # seconds between reads of the pod's events, for the progress (the watch's window)
QUIET_WINDOW = 30  # a watch's window when nobody follows the progress
WATCH_SLACK = 5.0  # the API server ends a watch at its window; a stalled one is left this much later
LOG_TAIL_ON_FAILURE = 40
EXEC_ATTEMPTS = 3


async def _events(rt: KubernetesRuntime, pod: dict[str, Any]) -> list[dict[str, Any]]:
    uid = pod["metadata"]["uid"]
    found = await rt.conn.request("GET", rt.conn.path("events"), params={"fieldSelector": f"involvedObject.uid={uid}"})
    return sorted((found or {}).get("items") or [], key=states.event_time)


async def _create(rt: KubernetesRuntime, body: dict[str, Any], name: str) -> dict[str, Any]:
    """Create the pod; a leftover of the same name is deleted first (and waited for)."""
    for _attempt in range(3):
        try:
            created: dict[str, Any] = await rt.conn.request("POST", rt.conn.path("pods"), body=body)
            return created
        except KubeError as exc:
            if exc.api_status != 409:
                raise StartFailed(f"Kubernetes refused the pod: {exc.detail}") from exc
            await rt.delete_pod(name, grace=0, wait=True)
    raise StartFailed(f"pod name {name} stays taken")


def _settled(pod: dict[str, Any]) -> bool:
    """True once the IDE container runs or ended; raises when its image cannot be pulled."""
    if states.is_running(pod) or states.terminated(pod) is not None:
        return True
    reason, message = states.waiting_reason(pod)
    if reason in states.PULL_FAILURES:
        raise ImageNotFound(f"image {pod['spec']['containers'][0]['image']} cannot be pulled: {reason}: {message}")
    return False


async def _versions(rt: KubernetesRuntime, pod: dict[str, Any], seconds: int) -> AsyncGenerator[dict[str, Any], None]:
    """The pod's versions after ``pod`` for ``seconds``, from a watch the API server ends then."""
    params = {
        "fieldSelector": f"metadata.name={pod['metadata']['name']}",
        "resourceVersion": pod["metadata"]["resourceVersion"],
        "timeoutSeconds": str(seconds),
    }
    async with aclosing(rt.conn.watch(rt.conn.path("pods"), params)) as changes:
        async for kind, obj in changes:
            if kind == "DELETED":
                raise StartFailed("the pod was deleted while it started")
            yield obj


async def _until_running(
    rt: KubernetesRuntime, pod: dict[str, Any], limit: float, progress: Progress | None
) -> dict[str, Any]:
    """Follow the pod until its IDE container runs (or ended), reporting each new step.

    A watch sees each change as it happens (polling added up to its interval after the kubelet's report);
    it is opened again every ``EVENTS_EVERY`` seconds, when the pod's events are read for the progress.
    """
    name = pod["metadata"]["name"]
    deadline = time.monotonic() + limit
    last_step: tuple[str, str] = ("", "")
    while not _settled(pod):
        if progress:
            step = states.progress_step(pod, await _events(rt, pod))
            if step != last_step:
                last_step = step
                await progress(step[0], {"detail": step[1]})
        left = deadline - time.monotonic()
        if left <= 0:
            reason, message = states.waiting_reason(pod)
            raise StartFailed(f"the pod is still pending after {limit:g}s: {reason}: {message}".rstrip(": "))
        window = max(1, math.ceil(min(left, EVENTS_EVERY if progress else QUIET_WINDOW)))
        try:
            with anyio.move_on_after(window + WATCH_SLACK):
                async with aclosing(_versions(rt, pod, window)) as versions:
                    async for fresh in versions:
                        pod = fresh
                        if _settled(pod):
                            break
        except KubeError as exc:
            if exc.api_status != 410:
                raise
            fresh = await rt.pod(name)
            if fresh is None:
                raise StartFailed("the pod was deleted while it started") from None
            pod = fresh
    return pod


async def _started_event(rt: KubernetesRuntime, pod: dict[str, Any]) -> None:
    """Return when the kubelet's ``Started`` event of the IDE container arrives: often up to a second before
    the pod's status says running (the status waits for the kubelet's next relist of its containers).
    Without it (the watch refused or ended) it waits for the caller to cancel it."""
    params = {"fieldSelector": f"involvedObject.uid={pod['metadata']['uid']}"}
    try:
        async with aclosing(rt.conn.watch(rt.conn.path("events"), params)) as changes:
            async for _kind, event in changes:
                where = str((event.get("involvedObject") or {}).get("fieldPath", ""))
                if event.get("reason") == "Started" and where.endswith(f"{{{IDE_CONTAINER}}}"):
                    return
    except (KubeError, RuntimeUnavailable):
        pass
    await anyio.sleep_forever()


async def _make_project(rt: KubernetesRuntime, name: str, home: str, *, attempts: int, check: bool = False) -> bool:
    """``mkdir -p`` the project in the pod; True when made. ``check``: raise ``StartFailed`` when it cannot be."""
    code, err = -1, b""
    for attempt in range(attempts):  # a loaded kubelet may refuse or drop the first exec (-1)
        if attempt:
            await anyio.sleep(0.5)
        try:
            code, _out, err = await rt.run_in(name, ["mkdir", "-p", "--", project_dir(home)])
        except (KubeError, RuntimeUnavailable):
            if check:
                raise
            return False
        if code != -1:
            break
    if code != 0 and check:
        raise StartFailed(f"the project directory could not be made: {err.decode(errors='replace')[-300:]}")
    return code == 0


async def start_pod(
    rt: KubernetesRuntime, spec: WorkspaceSpec, *, ready_timeout: float, progress: Progress | None
) -> Endpoint:
    """Start ``spec`` as a pod and wait until its IDE answers HTTP on the pod IP."""
    name = spec.container_name
    await common.concurrently(
        lambda: rt.ensure_claim(spec.id, spec.hub_id),
        lambda: rt.ensure_policy(spec.id, spec.hub_id, spec.ide_port),
        lambda: rt.drop_status(spec.id),
        lambda: rt.delete_pod(rt.helper_pod(spec.id), grace=0, wait=True),
    )
    body = pod_manifest(
        spec,
        user=rt.user,
        read_only_root=rt.read_only_root,
        pull_policy=rt.pull_policy,
        pvc=rt.claim(spec.id),
        cpu_request_ratio=rt.cpu_request_ratio,
    )
    pod = await _create(rt, body, name)
    uid = pod["metadata"]["uid"]
    found: list[Endpoint] = []
    try:
        if progress:
            await progress("created", {"container_id": uid})
        early = anyio.CancelScope()
        running = anyio.Event()

        async def alive() -> bool:
            state = await rt.inspect(spec.id)
            return state is not None and state.running and state.container_id == uid

        async def follow() -> None:
            fresh = await _until_running(rt, pod, max(rt.schedule_timeout, ready_timeout), progress)
            early.cancel()
            if not states.is_running(fresh):
                raise ProcessExited
            found.append(Endpoint(fresh["status"]["podIP"], spec.ide_port, uid))
            running.set()
            await wait_until_ready(found[0].url, within=ready_timeout, alive=alive)

        async def prepare() -> None:
            with early:
                await _started_event(rt, pod)
            made = not early.cancel_called and await _make_project(rt, name, spec.home, attempts=1)
            await running.wait()
            if not made:
                await _make_project(rt, name, spec.home, attempts=EXEC_ATTEMPTS, check=True)
            if progress:
                await progress("container_started", {"container_id": uid})

        await common.concurrently(follow, prepare)
        return found[0]
    except ProcessExited:
        state = await rt.inspect(spec.id)
        lines = await rt.tail_text(name)
        code = state.exit_code if state else None
        raise StartFailed(f"the IDE exited with code {code} before answering HTTP", logs=lines) from None
    except TimeoutError:
        lines = await rt.tail_text(name)
        await rt.delete_pod(name, grace=0, uid=uid)
        raise StartFailed(f"the IDE did not answer HTTP within {ready_timeout:g}s", logs=lines) from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await rt.delete_pod(name, grace=0, uid=uid)
        raise
