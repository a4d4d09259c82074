"""A persistent channel to a workspace's file helper: one long-lived ``exec`` of the image's ``sh`` with its
stdin attached, running a request loop, so that a file operation costs a process start inside the helper
(about 1 ms) instead of an engine call (``exec`` create/start/inspect or an archive request, 40-100 ms each:
Docker re-executes itself for every archive call and sets up every exec).

Protocol (hub → helper on stdin, one request at a time): a line with the count of fields, then one field per
line: a random nonce, the size of a payload, flags, and the command's argv. ``+name`` as the command runs one
of the scripts given when the channel opened, as a shell function in a subshell (a fork, no new ``sh`` to
exec; scripts have newlines, fields cannot). A payload of that many bytes follows the fields and is read
exactly (``dd iflag=fullblock``): up to ``MEMORY_PAYLOAD`` (flag ``T``) into a file of the loop's own on the
private tmpfs, which the command then reads as its stdin (no pipe, no drainer: two processes fewer), else
piped to the command's stdin and drained if the command stops reading, so the stream never falls out of step.
Every other command reads ``/dev/null``. Flag ``L`` takes the engine-side lock before the command (when
another loop holds it, the command does not run and the answer's code is ``BUSY``); flag ``U`` gives it back
once it has answered (the hub does not wait for that ``rm``; its next request on this channel does): a
mutation's lock costs no requests of its own. A command may leave paths to remove, one a line, in
``/run/codehub/later.<loop pid>`` (``$later``): the loop removes them after answering, before it reads the
next request (a batch's backups: freeing old contents is not on the answer's path). After the command, the
loop writes ``<nonce>\\n`` on stdout and ``<nonce> <exit code>\\n`` on stderr: the hub reads both streams
up to their marker, which the command cannot forge without the nonce.

The loop also keeps the workspace's **engine-side lock** (``trylock``/``unlock``): a file created exclusively
(``set -C``) in the helper's private tmpfs ``/run/codehub``, holding the holder's pid and start time. Every hub
process's channel runs in the same helper container, so hub processes serialize their mutations of one
workspace through it; a lock whose holder is gone (its channel closed, its hub died) is taken over. The
loop gives its lock back when its stdin closes.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError

from app import metrics
from app.errors import Conflict

log = logging.getLogger(__name__)

CALL_TIMEOUT = 300.0  # seconds one request may take (a listing of a very large tree, a large upload)
IDLE_CLOSE = 120.0  # seconds after which this hub closes a channel it has not used
OUTPUT_LIMIT = 512 << 20
PRIVATE_DIR = "/run/codehub"  # a tmpfs of the helper's own (the lock and small payloads live there)
PRIVATE_DIR_SIZE = 16 << 20
MEMORY_PAYLOAD = 1 << 20  # payloads up to this size are written to the tmpfs, then read by the command
BUSY = -1  # the answer's code when a request asked for the lock and another loop holds it
Opener = Callable[[], Awaitable["HelperChannel"]]
"""Opens a workspace's channel (its helper or pod made ready first), or raises."""
FIELDS_INLINE = 256  # fields up to this many bytes are read line by line (a byte a syscall), more by one ``dd``
COALESCE = 64 << 10  # a payload the loop stages before the command runs, up to this size, goes in the request's write

LOOP = r"""
while [ $# -gt 1 ]; do eval "s_$1() {
$2
}"; shift 2; done
lk=/run/codehub/lock; me="$$ $(cut -d' ' -f22 /proc/$$/stat)"; mine=
trylock() {
  [ -z "$mine" ] || return 0
  set -C; { echo "$me" > "$lk"; } 2>/dev/null && mine=1; set +C
  [ -z "$mine" ] || return 0
  read -r pid start < "$lk" 2>/dev/null || return 1
  [ "$(cut -d' ' -f22 "/proc/$pid/stat" 2>/dev/null)" != "$start" ] || return 1
  mv "$lk" "$lk.dead.$$" 2>/dev/null || return 1
  read -r p2 s2 < "$lk.dead.$$"
  if [ "$p2 $s2" = "$pid $start" ]; then rm -f "$lk.dead.$$"; else mv "$lk.dead.$$" "$lk"; fi
  return 1
}
unlock() { [ -z "$mine" ] || rm -f "$lk"; mine=; }
kept() {  # $1, or its deepest existing ancestor up to $2, is still the directory the hub checked (no link in
  # it): checked by entering it, in this shell (no fork), where the caller then is; the loop goes back to $top
  kept_d=$1; while [ "$kept_d" != "$2" ] && [ ! -e "$kept_d" ] && [ ! -L "$kept_d" ]; do kept_d=${kept_d%/*}; done
  cd -P -- "$kept_d" 2>/dev/null && [ "$PWD" = "$kept_d" ]
}
run_script() { f=$1; shift; ( "$f" "$@" ); }
drain() {
  b=$(($1 / 65536)); r=$(($1 % 65536))
  [ $b -eq 0 ] || dd bs=65536 count=$b iflag=fullblock 2>/dev/null
  [ $r -eq 0 ] || dd bs=$r count=1 iflag=fullblock 2>/dev/null
}
tidy() {
  [ -f "$later" ] || return 0
  set --; while IFS= read -r a; do set -- "$@" "$a"; done < "$later"; rm -rf -- "$@" "$later"
}
umask 022; tin=/run/codehub/in.$$ later=/run/codehub/later.$$ top=$PWD nl='
'
trap 'unlock; tidy; rm -f -- "$tin"' EXIT
while IFS=' ' read -r n len; do
  if [ "${len:-0}" -gt 0 ]; then
    set -f; IFS=$nl; set -- $(dd bs="$len" count=1 iflag=fullblock 2>/dev/null); unset IFS; set +f
    [ $# -eq "$n" ] || exit 0
  else
    set --; i=0
    while [ $i -lt "$n" ]; do IFS= read -r a || exit 0; set -- "$@" "$a"; i=$((i+1)); done
  fi
  nonce=$1 size=$2 flags=$3; shift 3
  case $flags in *W*) sink=$1; shift;; esac
  case $flags in *L*)
    if ! trylock; then
      [ "$size" -eq 0 ] || drain "$size" >/dev/null
      printf '%s\n' "$nonce"; printf '%s -1\n' "$nonce" >&2; continue
    fi;;
  esac
  case $1 in +*) f=s_${1#+}; shift; set -- run_script "$f" "$@";; esac
  case $flags in
    *W*)
      d=${sink%/*} sn=${sink##*/}
      if kept "$d" "$d" && { true > "$sn"; } 2>/dev/null; then
        [ "$size" -eq 0 ] || drain "$size" >> "$sn" || { rm -f -- "$sn"; exit 1; }; cd -- "$top"; "$@" </dev/null
      else cd -- "$top"; [ "$size" -eq 0 ] || drain "$size" >/dev/null; echo "cannot write $sn" >&2; false; fi;;
    *) if [ "$size" -eq 0 ]; then "$@" </dev/null
      else case $flags in
        *T*) drain "$size" > "$tin" || { rm -f -- "$tin"; exit 1; }; "$@" < "$tin";;
        *) drain "$size" | { "$@"; c=$?; cat >/dev/null; exit $c; };;
      esac; fi;;
  esac
  c=$?
  printf '%s\n' "$nonce"; printf '%s %s\n' "$nonce" "$c" >&2
  case $flags in *U*) unlock;; esac
  tidy
done
"""
_NAME = re.compile(r"[a-z_]+")
_END = re.compile(rb"([0-9a-f]{32}) (-?\d+)\n\Z")


class ChannelBroken(Exception):
    """The channel failed; ``sent``: the request (or part of it) may have reached the helper."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class HelperChannel:
    """One request loop in a running helper container (requests are serialized)."""

    def __init__(self, stream: Any, *, private_dir: bool = True) -> None:
        self._stream = stream
        self._private_dir = private_dir  # the loop has PRIVATE_DIR (a helper's tmpfs) for small payloads
        self._lock = anyio.Lock()
        self.closed = False
        self.holding = False  # the loop holds the workspace's lock: never closed for idleness
        self.last_used = time.monotonic()

    @property
    def busy(self) -> bool:
        """A request is under way."""
        return self._lock.locked()

    @classmethod
    async def open(
        cls, docker: aiodocker.Docker, container: str, user: tuple[int, int], scripts: Mapping[str, str]
    ) -> HelperChannel:
        """Start the loop in ``container`` (running) as ``user``, with ``scripts`` callable as ``+name``."""
        argv = ["sh", "-c", LOOP, "sh"]
        for name, script in scripts.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"bad script name {name!r}")
            argv += [name, script]
        with metrics.docker_call("exec"):
            execution = await docker.containers.container(container).exec(
                argv, stdin=True, stdout=True, stderr=True, user=f"{user[0]}:{user[1]}"
            )
        stream = execution.start(detach=False)
        await stream._init()
        channel = cls(stream)
        await channel.call([":"])  # the loop answers before a request that matters is sent
        return channel

    async def call(
        self, argv: list[str], data: bytes = b"", *, lock: str = "", sink: str = ""
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` (``data`` on its stdin): (exit code, stdout, stderr). A failure closes the channel.

        ``sink``: ``data`` is written to that file instead (created, or the command does not run and the
        answer's code is 1), and the command reads nothing.
        ``lock``: ``"L"`` takes the engine-side lock first (``BUSY``, the command not run, when another loop
        holds it), ``"U"`` gives it back after the command, ``"LU"`` both."""
        if any("\n" in arg or "\0" in arg for arg in [*argv, sink]):
            raise ValueError("a field of a helper request cannot hold a newline or a NUL")
        async with self._lock:
            if self.closed:
                raise ChannelBroken("the channel is closed", sent=False)
            nonce = secrets.token_hex(16)
            small = self._private_dir and 0 < len(data) <= MEMORY_PAYLOAD
            flags = lock + ("W" if sink else "T" if small else "")
            fields = [nonce, str(len(data)), flags or "-", *([sink] if sink else []), *argv]
            block = "".join(f"{field}\n" for field in fields).encode("utf-8", "surrogateescape")
            inline = len(block) <= FIELDS_INLINE or not all(fields)
            request = f"{len(fields)} {0 if inline else len(block)}\n".encode() + block
            staged = bool(sink) or small  # the loop reads the whole payload before the command runs
            if staged and len(data) <= COALESCE:
                request, data = request + data, b""
            sent = False
            try:
                with anyio.fail_after(CALL_TIMEOUT):
                    await self._stream.write_in(request)
                    sent = True
                    if staged and data:
                        await self._stream.write_in(data)
                        data = b""
                    result = await self._exchange(nonce, data)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await self.close()
                if isinstance(exc, (OSError, RuntimeError, TimeoutError, DockerError, ChannelBroken)):
                    raise ChannelBroken(f"the helper channel failed: {exc!r}", sent=sent) from exc
                raise
            self.last_used = time.monotonic()
            return result

    async def _exchange(self, nonce: str, data: bytes) -> tuple[int, bytes, bytes]:
        """Send the payload while the answer is read (a command may write before it has read everything)."""
        if not data:
            return await self._answer(nonce)
        answers: list[tuple[int, bytes, bytes]] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._stream.write_in, data)
                answers.append(await self._answer(nonce))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        return answers[0]

    async def _answer(self, nonce: str) -> tuple[int, bytes, bytes]:
        out_mark = f"{nonce}\n".encode()
        mark = nonce.encode()
        out, err = bytearray(), bytearray()
        code: int | None = None
        out_done = False
        while not (out_done and code is not None):
            message = await self._stream.read_out()
            if message is None:
                raise ChannelBroken("the helper closed the channel", sent=True)
            if message.stream == 1:
                out += message.data
                out_done = out.endswith(out_mark)
            else:
                err += message.data
                if (found := _END.search(err[-64:])) is not None and found.group(1) == mark:
                    code = int(found.group(2))
            if len(out) + len(err) > OUTPUT_LIMIT:
                raise ChannelBroken("the helper's answer is too large", sent=True)
        assert code is not None
        err_text = bytes(err)
        return code, bytes(out[: -len(out_mark)]), err_text[: err_text.rfind(mark)]

    async def close(self) -> None:
        """End the loop (its stdin closes; it gives its lock back and exits)."""
        if self.closed:
            return
        self.closed = True
        try:
            await self._stream.close()
        except (OSError, RuntimeError) as exc:
            log.debug("closing a helper channel: %s", exc)


class HelperChannels:
    """The open channels of one engine's runtime, by workspace; unused ones are closed after a while."""

    def __init__(self) -> None:
        self._open: dict[str, HelperChannel] = {}

    async def get(self, workspace_id: str) -> HelperChannel | None:
        """The workspace's open channel, if any (and closes the others idle for ``IDLE_CLOSE``)."""
        now = time.monotonic()
        for key, channel in list(self._open.items()):
            unused = now - channel.last_used > IDLE_CLOSE and not (channel.busy or channel.holding)
            if channel.closed or (key != workspace_id and unused):
                await self.drop(key)
        return self._open.get(workspace_id)

    async def put(self, workspace_id: str, channel: HelperChannel) -> None:
        """Keep ``channel`` as the workspace's (a previous one is closed)."""
        await self.drop(workspace_id)
        self._open[workspace_id] = channel

    async def drop(self, workspace_id: str) -> None:
        """Close the workspace's channel (before its helper is removed)."""
        channel = self._open.pop(workspace_id, None)
        if channel is not None:
            with anyio.CancelScope(shield=True):
                await channel.close()

    async def call(
        self,
        workspace_id: str,
        opener: Opener,
        argv: list[str],
        data: bytes = b"",
        *,
        retry: bool = True,
        lock: str = "",
        sink: str = "",
    ) -> tuple[int, bytes, bytes]:
        """``HelperChannel.call`` on the workspace's channel, opened by ``opener`` when there is none and once
        more when it breaks; a request that may have run is sent again only when ``retry``, and never when the
        lost channel held the lock (what was read under it is no longer safe)."""
        for attempt in range(2):
            channel = None if attempt else await self.get(workspace_id)
            if channel is None:
                channel = await opener()
                await self.put(workspace_id, channel)
            try:
                found = await channel.call(argv, data, lock=lock, sink=sink)
            except ChannelBroken as exc:
                await self.drop(workspace_id)
                if channel.holding:
                    raise Conflict("the workspace's file helper went away; try again", code="storage_error") from exc
                if attempt > 0 or (exc.sent and not retry):
                    log.warning("file channel of %s failed: %s", workspace_id, exc)
                    raise Conflict("the workspace's file helper did not answer", code="storage_error") from exc
                continue
            if found[0] != BUSY:
                channel.holding = "U" not in lock and ("L" in lock or channel.holding)
            return found
        raise AssertionError("unreachable")

    @staticmethod
    async def open_retried(open_once: Opener, errors: tuple[type[Exception], ...], workspace_id: str) -> HelperChannel:
        """``open_once()``, tried once more when it fails with one of ``errors`` (the helper or pod was going
        away: idle exit, replacement, the workspace starting or stopping)."""
        caught: tuple[type[Exception], ...] = (*errors, ChannelBroken)
        for attempt in range(2):
            try:
                return await open_once()
            except caught as exc:
                if attempt == 0:
                    continue
                log.warning("file helper of %s did not run: %s", workspace_id, exc)
                raise Conflict("the workspace's file helper did not run", code="storage_error") from exc
        raise AssertionError("unreachable")

    async def close_all(self) -> None:
        """Close every channel (the runtime is closing)."""
        for key in list(self._open):
            await self.drop(key)


__all__ = ["BUSY", "PRIVATE_DIR", "PRIVATE_DIR_SIZE", "ChannelBroken", "HelperChannel", "HelperChannels"]
