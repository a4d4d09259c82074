"""The file seam's request loop in a pod: the Docker helper's channel (``docker_channel``: one long-lived ``sh``
running request after request, with nonce-framed answers) over one ``pods/exec`` socket instead of an engine
stream. A file operation then costs a fork in the pod, not a new exec through the API server and the kubelet.

The lock of the claim (``claimlock``) is a directory on the claim itself, so that loops in the helper pod and
in the workspace pod, from any hub process, take turns. It names its holder (pod, loop pid and start time): a
loop of the same pod that is gone is overtaken at once, one of another pod (the helper of a workspace that has
started since) after ``stale`` seconds.
"""

from __future__ import annotations

from typing import NamedTuple

import anyio.abc

from app.services.runtime.docker_channel import LOOP, HelperChannel
from app.services.runtime.docker_volume_support import BATCH_SCRIPT, LIST_SCRIPT, MOVE_SCRIPT, SNAPSHOT_SCRIPT
from app.services.runtime.kubernetes import pod_exec
from app.services.runtime.kubernetes.connection import KubeConnection

READ_SCRIPT = (
    '[ -f "$1" ] && [ ! -L "$1" ] || { [ -e "$1" ] || [ -L "$1" ] || exit 4; exit 3; }; exec head -c "$2" -- "$1"'
)
CLAIM_LOCK_SCRIPT = r"""
l=$1; stale=$2; me="$(uname -n) $$ $(cut -d' ' -f22 /proc/$$/stat)"; now=$(date +%s)
if mkdir -- "$l" 2>/dev/null; then echo "$me $now" > "$l/at"; exit 0; fi
key=$(cat -- "$l/at" 2>/dev/null); set -- $key
if [ $# -eq 4 ]; then host=$1 pid=$2 start=$3 at=$4; else host=- at=$(stat -c %Y -- "$l" 2>/dev/null || echo "$now"); fi
[ "$host $pid $start" != "$me" ] || exit 0
if [ "$host" = "$(uname -n)" ]; then
  [ "$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null)" != "$start" ] || exit 1
else
  [ $((now - at)) -gt "$stale" ] || exit 1
fi
mv -- "$l" "$l.dead.$$" 2>/dev/null || exit 1
if [ "$(cat -- "$l.dead.$$/at" 2>/dev/null)" = "$key" ]; then rm -rf -- "$l.dead.$$"; else mv -- "$l.dead.$$" "$l"; fi
exit 1
"""
UNLOCK_SCRIPT = 'read -r host pid start at < "$1/at" && [ "$host $pid" = "$(uname -n) $$" ] && rm -rf -- "$1"; true'
SCRIPTS = {
    "batch": BATCH_SCRIPT,
    "move": MOVE_SCRIPT,
    "snapshot": SNAPSHOT_SCRIPT,
    "list": LIST_SCRIPT,
    "read": READ_SCRIPT,
    "claimlock": CLAIM_LOCK_SCRIPT,
    "claimunlock": UNLOCK_SCRIPT,
}
CHUNK = 64 << 10


class _Output(NamedTuple):
    stream: int
    data: bytes


class ExecStream:
    """``HelperChannel``'s stream over a ``ChannelSession``: stdin out, stdout (1) and stderr (2) in; the exec's
    final ``Status`` ends it."""

    def __init__(self, session: pod_exec.ChannelSession) -> None:
        self._session = session

    async def write_in(self, data: bytes) -> None:
        """Send ``data`` on stdin (a socket already closed fails before anything is sent)."""
        if self._session.done:
            raise ConnectionError("the exec socket is closed")
        for offset in range(0, len(data), CHUNK):
            await self._session.send(pod_exec.STDIN, data[offset : offset + CHUNK])

    async def read_out(self) -> _Output | None:
        """The next stdout or stderr bytes; None once the command or the socket has ended."""
        while (message := await self._session.receive()) is not None:
            channel, data = message
            if channel == pod_exec.ERROR and data:
                return None
            if channel in (pod_exec.STDOUT, pod_exec.STDERR) and data:
                return _Output(channel, data)
        return None

    async def close(self) -> None:
        """Close the socket (the loop's stdin ends and it exits)."""
        self._session.close()


async def open_channel(tg: anyio.abc.TaskGroup, conn: KubeConnection, pod: str, container: str) -> HelperChannel:
    """Start the request loop in ``pod``'s ``container`` (as the pod's user), with ``SCRIPTS`` as ``+name``."""
    argv = ["sh", "-c", LOOP, "sh"]
    for name, script in SCRIPTS.items():
        argv += [name, script]
    params = pod_exec.exec_params(argv, stdin=True, tty=False, container=container)
    session = await pod_exec.open_session(tg, conn, pod, params)
    channel = HelperChannel(ExecStream(session), private_dir=False)  # pods have no helper tmpfs
    await channel.call([":"])  # the loop answers before a request that matters is sent
    return channel


__all__ = ["SCRIPTS", "ExecStream", "open_channel"]
