"""Reading pods: their runtime state, why a pending pod waits, log lines and the kubelet's numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.services.runtime.base import LABEL_HUB, LABEL_OWNER, LABEL_WORKSPACE, LogLine, ResourceStatus, RuntimeState
from app.services.runtime.kubernetes.manifests import IDE_CONTAINER

PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")


def ide_status(pod: dict[str, Any], container: str = IDE_CONTAINER) -> dict[str, Any]:
    """The IDE container's (or ``container``'s) status ({} before the kubelet reports one)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return dict(status)
    return {}


def terminated(pod: dict[str, Any], container: str = IDE_CONTAINER) -> dict[str, Any] | None:
    """The IDE's (or ``container``'s) ``terminated`` state (None while it has not ended)."""
    state = ide_status(pod, container).get("state") or {}
    found = state.get("terminated")
    return dict(found) if found is not None else None


def is_running(pod: dict[str, Any], container: str = IDE_CONTAINER) -> bool:
    """True when the IDE container (or ``container``) runs and the pod is not being deleted."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return "running" in (ide_status(pod, container).get("state") or {})


def state_of(pod: dict[str, Any]) -> RuntimeState:
    """The runtime's view of one pod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = ide_status(pod)
    state = status.get("state") or {}
    ended = state.get("terminated")
    running = is_running(pod)
    phase = (pod.get("status") or {}).get("phase", "Pending")
    return RuntimeState(
        workspace_id=labels.get(LABEL_WORKSPACE, ""),
        container_id=str(meta.get("uid", "")),
        running=running,
        status="running" if running else "exited" if ended else phase.lower(),
        exit_code=int(ended["exitCode"]) if ended and ended.get("exitCode") is not None else None,
        oom_killed=bool(ended and ended.get("reason") == "OOMKilled"),
        started_at=(state.get("running") or ended or {}).get("startedAt"),
        finished_at=(ended or {}).get("finishedAt"),
        hub_id=labels.get(LABEL_HUB, ""),
        owner=labels.get(LABEL_OWNER, ""),
    )


def waiting_reason(pod: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of a pod that does not run yet: unschedulable, volume, image pull, creating."""
    status = pod.get("status") or {}
    waiting = (ide_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason"):
        return str(waiting["reason"]), str(waiting.get("message", ""))
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("reason") or "Unschedulable"), str(condition.get("message", ""))
    return str(status.get("phase") or "Pending"), str(status.get("message", ""))


def progress_step(pod: dict[str, Any], events: list[dict[str, Any]]) -> tuple[str, str]:
    """The start step a pod is at, from its status and its events: (step, detail)."""
    status = pod.get("status") or {}
    scheduled = any(
        c.get("type") == "PodScheduled" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    latest = events[-1] if events else {}
    reason, message = str(latest.get("reason", "")), str(latest.get("message", ""))
    if not scheduled:
        if reason == "FailedScheduling" and "PersistentVolumeClaim" in message:
            return "volume", message
        return "scheduling", message or waiting_reason(pod)[1]
    if reason in ("Pulling", "Pulled", "Failed", "BackOff") and "image" in message.lower():
        return "pulling", message
    if reason in ("FailedMount", "FailedAttachVolume"):
        return "volume", message
    return "creating", message


def event_time(event: dict[str, Any]) -> str:
    """When an event last happened (for ordering)."""
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def log_line(raw: str) -> LogLine:
    """A ``timestamps=true`` log line: ``<RFC 3339 nano> <text>`` → ``LogLine`` (time cut to microseconds)."""
    stamp, _, text = raw.partition(" ")
    return LogLine(at=_micro(stamp), text=text.rstrip("\r"))


def _micro(stamp: str) -> str:
    head, dot, rest = stamp.partition(".")
    if not dot:
        return stamp
    digits = rest.rstrip("Z")
    return f"{head}.{(digits + '000000')[:6]}Z"


def unix_of(stamp: str) -> float:
    """UNIX time of an RFC 3339 timestamp."""
    return datetime.fromisoformat(_micro(stamp).replace("Z", "+00:00")).timestamp()


def since_seconds(since: float) -> int:
    """``sinceSeconds`` covering everything after the UNIX time ``since`` (at least 1)."""
    return max(1, int(datetime.now(UTC).timestamp() - since) + 1)


def resource_status(summary: dict[str, Any], pod_name: str, namespace: str, memory_limit: int) -> ResourceStatus | None:
    """The pod's numbers from the kubelet's summary (None when the kubelet has none yet)."""
    for pod in summary.get("pods") or []:
        ref = pod.get("podRef") or {}
        if ref.get("name") != pod_name or ref.get("namespace") != namespace:
            continue
        cpu = pod.get("cpu") or {}
        memory = pod.get("memory") or {}
        for container in pod.get("containers") or []:
            if container.get("name") == IDE_CONTAINER:
                cpu = container.get("cpu") or cpu
                memory = container.get("memory") or memory
        used = memory.get("workingSetBytes") or memory.get("usageBytes") or 0
        pids = (pod.get("process_stats") or {}).get("process_count") or 1
        return ResourceStatus(
            cpu_percent=round((cpu.get("usageNanoCores") or 0) / 1e7, 2),
            memory_used_bytes=int(used),
            memory_limit_bytes=memory_limit,
            pids=int(pids),
            sampled_at=str(cpu.get("time") or memory.get("time") or datetime.now(UTC).isoformat()),
        )
    return None


def memory_limit_of(pod: dict[str, Any]) -> int:
    """The IDE container's memory limit in bytes (Mi or Gi quantities, as the runtime writes them)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == IDE_CONTAINER:
            value = str(((container.get("resources") or {}).get("limits") or {}).get("memory", "0"))
            units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
            for suffix, factor in units.items():
                if value.endswith(suffix):
                    return int(float(value[: -len(suffix)]) * factor)
            return int(float(value or 0))
    return 0
