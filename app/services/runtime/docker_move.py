"""Moving a workspace's volume to another engine: streamed engine to engine through the hub, then verified.

The source helper's ``GET …/archive`` of the home is piped, chunk by chunk, into ``PUT …/archive`` on the
target's helper (a fresh volume, mounted without the image's home). The hub keeps no copy: a bounded queue of
chunks feeds a worker thread that reads the same stream as a tar and builds the **manifest**: every entry's
path, type, size, mode and sha256 (or link target). The target is then read back the same way and its manifest
must be identical; only then is the move good. Any failure removes the target volume (if the target still
answers) and leaves the source as it was. Memory stays bounded by the queue (``QUEUE_CHUNKS`` of ``CHUNK`` bytes).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import anyio.from_thread
import msgspec
from aiodocker.exceptions import DockerError
from anyio.streams.memory import MemoryObjectReceiveStream

from app import metrics
from app.errors import BadGateway, Conflict, DomainError, ServiceUnavailable
from app.services.runtime.base import RuntimeUnavailable, WorkspaceRuntime
from app.services.runtime.docker import DockerRuntime
from app.services.runtime.docker_volume import DockerVolumeFiles

log = logging.getLogger(__name__)
CHUNK = 1 << 16
QUEUE_CHUNKS = 16
PROGRESS_EVERY = 0.5  # seconds between progress reports
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)


class ManifestEntry(msgspec.Struct, frozen=True, array_like=True):
    """One entry of a volume: ``digest`` is the sha256 of a file, the target of a link, else empty."""

    path: str
    kind: str
    size: int
    mode: int
    digest: str


class Manifest(msgspec.Struct, frozen=True):
    """Every entry of a volume's home, in archive order."""

    entries: list[ManifestEntry]

    @property
    def files(self) -> int:
        """How many entries (files, directories, links)."""
        return len(self.entries)

    @property
    def size(self) -> int:
        """Bytes of regular file content."""
        return sum(e.size for e in self.entries if e.kind == "file")

    @property
    def sha256(self) -> str:
        """One hash of the whole manifest (what the audit log keeps)."""
        return hashlib.sha256(msgspec.json.encode(sorted(self.entries, key=lambda e: e.path))).hexdigest()


class MoveProgress(msgspec.Struct, frozen=True):
    """How far a copy is: archive bytes sent and entries seen."""

    bytes_done: int
    files_done: int


Progress = Callable[[MoveProgress], Awaitable[None]]


class _Chunks(io.RawIOBase):
    """A blocking file over the queue of chunks (read from a worker thread)."""

    def __init__(self, receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._receive, self._buffer, self.entries = receive, b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buffer:
            try:
                self._buffer = anyio.from_thread.run(self._receive.receive)
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n


def _entry_name(name: str) -> str:
    name = name.removeprefix("./").rstrip("/")
    return "" if name == "." else name


def scan(chunks: _Chunks) -> Manifest:
    """The manifest of a tar stream (blocking); the rest of the stream is drained even when it is not a tar."""
    entries: list[ManifestEntry] = []
    try:
        with tarfile.open(fileobj=chunks, mode="r|") as archive:
            for member in archive:
                digest, kind = "", "other"
                if member.isreg():
                    kind, sha = "file", hashlib.sha256()
                    handle = archive.extractfile(member)
                    assert handle is not None
                    while block := handle.read(CHUNK):
                        sha.update(block)
                    digest = sha.hexdigest()
                elif member.isdir():
                    kind = "dir"
                elif member.issym() or member.islnk():
                    kind, digest = ("symlink" if member.issym() else "hardlink"), member.linkname
                size = member.size if kind == "file" else 0
                entries.append(ManifestEntry(_entry_name(member.name), kind, size, member.mode & 0o7777, digest))
                chunks.entries = len(entries)
    finally:
        while chunks.read(CHUNK):
            pass
    return Manifest(entries)


async def _manifest_of(
    files: DockerVolumeFiles, forward: Callable[[AsyncIterator[bytes]], Awaitable[None]] | None, progress: Progress
) -> Manifest:
    """Read the home of ``files``'s volume as a tar, build its manifest; ``forward`` gets the same chunks."""
    send, receive = anyio.create_memory_object_stream[bytes](QUEUE_CHUNKS)
    reader = _Chunks(receive)
    found: list[Manifest] = []
    failure: BaseException | None = None
    unreadable: list[tarfile.TarError] = []

    async def run_scan() -> None:
        with receive:
            try:
                found.append(await anyio.to_thread.run_sync(scan, reader))
            except tarfile.TarError as exc:  # a cut stream: the copy's own failure says why
                unreadable.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_scan)
        try:
            helper = await files.helper()
            with metrics.docker_call("archive_get"):
                async with files.docker._query(
                    f"containers/{helper}/archive", params={"path": f"{files.home}/."}, timeout=TIMEOUT
                ) as response:
                    chunks = _relay(response.content.iter_chunked(CHUNK), send, reader, progress)
                    try:
                        if forward is None:
                            async for _chunk in chunks:
                                pass
                        else:
                            await forward(chunks)
                    except BaseException:
                        response.close()  # the engine must see the reader go, not a stalled connection
                        raise
                    finally:
                        await chunks.aclose()
        except BaseException as exc:
            failure = exc
        finally:
            send.close()
    if failure is not None:
        raise failure
    if unreadable:
        raise unreadable[0]
    return found[0]


async def _relay(source: AsyncIterator[bytes], send: Any, reader: _Chunks, progress: Progress) -> AsyncGenerator[bytes]:
    done, reported = 0, time.monotonic()
    try:
        async for chunk in source:
            await send.send(chunk)
            done += len(chunk)
            if time.monotonic() - reported >= PROGRESS_EVERY:
                reported = time.monotonic()
                await progress(MoveProgress(done, reader.entries))
            yield chunk
    except (aiohttp.ClientError, OSError, DockerError) as exc:
        raise _SourceFailed(str(exc)) from exc
    await progress(MoveProgress(done, reader.entries))


class _SourceFailed(Exception):
    pass


async def copy_volume(source: DockerVolumeFiles, target: DockerVolumeFiles, progress: Progress) -> Manifest:
    """Copy ``source``'s volume into a new volume on ``target``'s engine and verify it; the verified manifest.

    409 ``target_has_volume`` when the target engine already has the volume; 502 ``move_failed`` when an
    engine fails midway and ``move_mismatch`` when the copy differs. On every failure the target volume is
    removed (when the target still answers) and the source is untouched."""
    if await target.volume_exists():
        raise Conflict("the target engine already has a volume for this workspace", code="target_has_volume")
    try:
        await target.ensure_volume()
        helper = await target.helper(nocopy=True)

        async def put(chunks: AsyncIterator[bytes]) -> None:
            with metrics.docker_call("archive_put"):
                async with target.docker._query(
                    f"containers/{helper}/archive",
                    method="PUT",
                    params={"path": target.home, "noOverwriteDirNonDir": "true"},
                    data=chunks,
                    headers={"Content-Type": "application/x-tar"},
                    timeout=TIMEOUT,
                ):
                    pass

        sent = await _manifest_of(source, put, progress)
        copied = await _manifest_of(target, None, _ignore)
    except BaseException as exc:
        await _discard(target)
        if isinstance(exc, _SourceFailed):
            raise BadGateway("the source engine failed while the volume was read", code="move_failed") from exc
        if isinstance(exc, (DockerError, aiohttp.ClientError, OSError, DomainError, tarfile.TarError)):
            log.warning("moving the volume of %s failed: %s", source.workspace_id, exc)
            raise BadGateway(
                "the volume could not be copied to the target engine; the workspace stays where it was",
                code="move_failed",
            ) from exc
        raise
    if sent != copied:
        await _discard(target)
        raise BadGateway(
            "the copy on the target engine does not match the source; the workspace stays where it was",
            code="move_mismatch",
        )
    return sent


async def _ignore(_progress: MoveProgress) -> None:
    return None


async def _discard(target: DockerVolumeFiles) -> None:
    """Remove the target's partial volume and helper; an engine that does not answer is logged."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(60):
        try:
            await target.purge()
        except (DomainError, DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("the partial copy of %s was not removed from its target: %s", target.workspace_id, exc)


async def move_volume(
    source: WorkspaceRuntime,
    target: WorkspaceRuntime,
    workspace_id: str,
    *,
    image: str,
    progress: Progress,
    switch: Callable[[Manifest | None], Awaitable[bool]],
) -> Manifest | None:
    """Move a stopped workspace's volume from ``source`` to ``target`` (both Docker engines).

    File operations that change the workspace wait meanwhile, in this hub process and in every other (the
    source engine's lock). ``switch`` (the database's compare-and-set to
    the target) runs only after the copy verified; when it answers False (the workspace changed meanwhile) the
    copy is removed and 409 ``workspace_changed`` raised. The source volume and helper are removed only after
    a switch. None (and a plain switch) when the workspace has no volume yet or a runtime has no volumes."""
    if not isinstance(source, DockerRuntime) or not isinstance(target, DockerRuntime):
        await _switched(switch, None)
        return None
    async with source.storage_lock(workspace_id):
        from_files = source.volume_files(workspace_id, image=image)
        try:
            exists = await from_files.volume_exists()
        except RuntimeUnavailable as exc:
            raise ServiceUnavailable(
                "the workspace's engine does not answer, so its files cannot be moved; place it with "
                "leave_files=true to move it without them (they stay on that engine)",
                code="source_unreachable",
            ) from exc
        if not exists:
            await _switched(switch, None)
            return None
        to_files = target.volume_files(workspace_id, image=image)
        async with from_files.exclusive():  # other hub processes' writes wait until the switch is decided
            manifest = await copy_volume(from_files, to_files, progress)
            if not await switch(manifest):
                await _discard(to_files)
                raise Conflict("the workspace changed while it was moved; nothing was moved", code="workspace_changed")
        try:
            await source.remove(workspace_id)
            await from_files.purge()
        except (DomainError, DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("workspace %s moved, but its old volume was not removed: %s", workspace_id, exc)
    return manifest


async def _switched(switch: Callable[[Manifest | None], Awaitable[bool]], manifest: Manifest | None) -> None:
    if not await switch(manifest):
        raise Conflict("the workspace changed while it was placed; nothing was moved", code="workspace_changed")


__all__ = ["Manifest", "ManifestEntry", "MoveProgress", "Progress", "copy_volume", "move_volume"]
