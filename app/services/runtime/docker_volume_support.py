"""Pure parts of the Docker volume storage: the helper's shell scripts, Docker's stat header, tars, errors."""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from app.errors import Conflict, DomainError, NotFound
from app.services.files.paths import join, os_error
from app.services.files.remote import NodeKind, RemoteChange, RemoteStat

_GO_DIR, _GO_LINK, _GO_OTHER = 1 << 31, 1 << 27, (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21)

WRITE_SCRIPT = r"""
tmp=${1##*/}; dst=${2##*/}; mode=$3; d=${2%/*}
if ! kept "$d" "$d"; then echo "a parent of $dst changed" >&2; exit 3; fi  # and now in $d: the acts go through it
if { [ "$mode" = 644 ] || chmod "$mode" "$tmp"; } && mv -f -T -- "$tmp" "$dst"; then exit 0; fi
rm -f -- "$tmp"; echo "cannot write $dst" >&2; exit 3
"""
MOVE_SCRIPT = r"""
src=$1; dst=$2; shift 2
if [ $# -eq 0 ] || mkdir -p -- "$@"; then
  if ! kept "${src%/*}" "${src%/*}" || ! kept "${dst%/*}" "${dst%/*}"; then echo "a parent of ${dst##*/} changed" >&2
  elif mv -f -T -- "$src" "$dst"; then exit 0; fi
fi
[ $# -eq 0 ] || rmdir -- "$@" 2>/dev/null; exit 1
"""
BATCH_SCRIPT = r"""
root=$1; sfx=$2; nd=$3; shift 3
nl='
'
set -f; IFS=$nl; dirs=; i=0
while [ $i -lt "$nd" ]; do dirs=$dirs$nl$1; shift; i=$((i+1)); done
g=0; prev=; D=; N=; X=; failed=
while [ $# -gt 0 ]; do
  p=$1 name=$2 op=$3; shift 3; t=$p/$name
  if [ "$p" != "$prev" ]; then
    g=$((g+1)); prev=$p; eval "G_$g=\$p E_$g= M_$g="; X=$X$nl$p/.codehub-b$sfx.$g
  fi
  if [ -d "$t" ] && [ ! -L "$t" ]; then failed="is a directory: ${t#$root/}"; fi
  if [ -e "$t" ] || [ -L "$t" ]; then eval "E_$g=\$E_$g\$nl\$t"; elif [ "$op" = w ]; then N=$N$nl$t; fi
  if [ "$op" = w ]; then
    eval "m=\$M_$g"; [ -n "$m" ] || X=$X$nl$p/.codehub-s$sfx.$g
    eval "M_$g=\$m\$nl\$p/.codehub-s\$sfx.\$g/\$name"
  else D=$D$nl$t; fi
done
k=0
while [ -z "$failed" ] && [ $k -lt $g ]; do  # a parent swapped for a link since the hub's check: nothing staged
  k=$((k+1)); eval "a=\$G_$k"
  kept "$a" "$root" || failed="a parent of ${a#$root/} changed"
done
[ -n "$failed" ] || tar -xf - -C "$root" || failed="cannot stage the new contents"
k=0
while [ -z "$failed" ] && [ $k -lt $g ]; do
  k=$((k+1)); eval "p=\$G_$k e=\$E_$k"; b=$p/.codehub-b$sfx.$k
  [ -z "$e" ] || ln -- $e "$b/" 2>/dev/null || for t in $e; do
    bk=$b/${t##*/}
    [ -e "$bk" ] || [ -L "$bk" ] || mv -f -- "$t" "$b/" || { failed="cannot back up ${t#$root/}"; break; }
  done
done
[ -n "$failed" ] || [ -z "$D" ] || rm -f -- $D || failed="cannot delete"
k=0
while [ -z "$failed" ] && [ $k -lt $g ]; do
  k=$((k+1)); eval "p=\$G_$k m=\$M_$k"
  [ -z "$m" ] || mv -f -- $m "$p/" || failed="cannot write in ${p#$root}"
done
if [ -n "$failed" ]; then
  k=0
  while [ $k -lt $g ]; do
    k=$((k+1)); eval "p=\$G_$k e=\$E_$k"
    for t in $e; do
      bk=$p/.codehub-b$sfx.$k/${t##*/}
      if [ -e "$bk" ] || [ -L "$bk" ]; then mv -f -T -- "$bk" "$t" 2>/dev/null; fi
    done
  done
  [ -z "$N" ] || rm -f -- $N
  rm -rf -- $X; [ -z "$dirs" ] || rmdir -- $dirs 2>/dev/null
  echo "$failed" >&2; exit 3
fi
if [ -z "$D" ] && { printf '%s\n' $X > "$later"; } 2>/dev/null; then exit 0; fi  # the loop removes them after answering
rm -rf -- $X
for t in $D; do d=${t%/*}; while [ "$d" != "$root" ] && rmdir -- "$d" 2>/dev/null; do d=${d%/*}; done; done
exit 0
"""
SNAPSHOT_SCRIPT = r"""
limit=$1; shift
nl='
'
kinds=; links=; ex=
for p; do
  if [ -L "$p" ]; then kinds=${kinds}L; links=$links$nl$p; ex=$ex$nl$p
  elif [ -e "$p" ]; then kinds=${kinds}E; ex=$ex$nl$p
  else kinds=$kinds-; fi
done
printf '%s\n' "$kinds"
set -f; IFS=$nl
for p in $links; do printf '%s\0' "$(readlink -- "$p")"; done
[ -n "$ex" ] || exit 0
st=$(stat -c '%f %s %Y %i %z' -- /proc/self/. $ex) || exit 5
printf '%s\n' "$st"
[ "$limit" -ge 0 ] || exit 0
set -- $ex; files=; now=; total=0
for line in $st; do
  [ -n "$now" ] || { now=1; continue; }
  p=$1; shift; size=${line#* }; size=${size%% *}
  case $line in 8???\ *) [ "$size" -gt "$limit" ] || { files=$files$nl$p; total=$((total + size)); };; esac
done
[ -n "$files" ] || exit 0
[ "$total" -gt 262144 ] || exec tar -cf - -- $files
exec 3>&1  # many bytes: tar's small writes gathered into 64 KiB ones (each read of the engine's is a frame)
c=$({ { tar -cf - -- $files; echo $? >&4; } | dd bs=65536 iflag=fullblock 2>/dev/null >&3; } 4>&1); exit "$c"
"""
MANIFEST_SCRIPT = r"""
cd "$1" || exit 4
find . -type f -exec sha256sum -- {} +
find . -type l -exec sh -c 'for l; do printf "link %s %s\n" "$(readlink -- "$l")" "$l"; done' sh {} +
"""
LIST_SCRIPT = r"""
cd "$1" || exit 4
if [ "$3" = 1 ]; then
  find . -mindepth 1 -maxdepth "$2" -print0 -exec sh -c 'stat -c "%f %s %Y" -- "$@" >&2' sh {} +
else
  find . -mindepth 1 -maxdepth "$2" -name .git -prune -o -print0 -exec sh -c 'stat -c "%f %s %Y" -- "$@" >&2' sh {} +
fi
"""


KINDS: dict[int, NodeKind] = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}


def mode_kind(mode: int) -> NodeKind:
    return KINDS.get(mode & 0o170000, "other")


def remote_stat(raw: dict[str, Any]) -> RemoteStat:
    """A stat from Docker's path-stat header (Go ``os.FileMode`` bits)."""
    mode = int(raw.get("mode") or 0)
    if mode & _GO_DIR:
        kind: NodeKind = "dir"
    elif mode & _GO_LINK:
        kind = "symlink"
    elif mode & _GO_OTHER:
        kind = "other"
    else:
        kind = "file"
    mtime = datetime.fromisoformat(str(raw.get("mtime") or "1970-01-01T00:00:00+00:00").replace("Z", "+00:00"))
    return RemoteStat(
        kind, int(raw.get("size") or 0), mode & 0o777, mtime.timestamp(), str(raw.get("linkTarget") or "")
    )


def tar_entries(
    entries: Sequence[tuple[tuple[str, ...], bytes | None, int]], user: tuple[int, int], *, prefix: tuple[str, ...]
) -> bytes:
    """A tar of directories (``None``) and files, owned by ``user``."""
    buffer, now = io.BytesIO(), time.time()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for parts, data, mode in entries:
            info = tarfile.TarInfo("/".join((*prefix, *parts)))
            info.uid, info.gid, info.mode, info.mtime = user[0], user[1], mode, now
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def batch_request(
    project: str,
    changes: Sequence[RemoteChange],
    new_dirs: Sequence[tuple[str, ...]],
    path: Callable[[tuple[str, ...]], str],
    user: tuple[int, int],
) -> tuple[list[str], bytes]:
    """The ``+batch`` request (``BATCH_SCRIPT``) of a change: its argv and its payload, a tar of the new
    directories and, per parent directory, a backup directory and a staging directory with the new contents."""
    sfx = secrets.token_hex(8)
    staged: list[tuple[tuple[str, ...], bytes | None, int]] = [(d, None, 0o755) for d in new_dirs]
    deepest = [path(d) for d in sorted(new_dirs, key=len, reverse=True)]
    argv = ["+batch", project, sfx, str(len(deepest)), *deepest]
    groups: dict[tuple[str, ...], list[RemoteChange]] = {}
    for change in changes:
        groups.setdefault(change.parts[:-1], []).append(change)
    for index, (parent, members) in enumerate(sorted(groups.items()), start=1):
        staged.append(((*parent, f".codehub-b{sfx}.{index}"), None, 0o700))
        if any(c.data is not None for c in members):
            staged.append(((*parent, f".codehub-s{sfx}.{index}"), None, 0o700))
        for change in members:
            if change.data is not None:
                staged.append(((*parent, f".codehub-s{sfx}.{index}", change.parts[-1]), change.data, change.mode))
            argv += [path(parent), change.parts[-1], "d" if change.data is None else "w"]
    return argv, tar_entries(staged, user, prefix=())


def tar_tree(directory: Path, user: tuple[int, int]) -> str:
    """A temporary tar file of ``directory``'s contents (links kept as links), owned by ``user``."""

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = user[0], user[1], "", ""
        return info

    handle, path = tempfile.mkstemp(prefix="codehub-upload-", suffix=".tar")
    with os.fdopen(handle, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in sorted(directory.iterdir()):
            archive.add(entry, arcname=entry.name, recursive=True, filter=owned)
    return path


def message(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip().splitlines()
    return text[-1][:300] if text else "the file helper failed"


def failure(err: bytes, path: str) -> DomainError:
    """The error a failed helper command means (as the local backend's ``os_error`` would say)."""
    text = err.decode("utf-8", "replace")
    if "not empty" in text:
        return os_error(OSError(39, "Directory not empty"), path)
    if "No such file" in text:
        return os_error(OSError(2, "No such file or directory"), path)
    if "Permission denied" in text:
        return os_error(OSError(13, "Permission denied"), path)
    return Conflict(f"{path!r}: {message(err)}", code="io_error")


def parse_snapshot(
    paths: Sequence[tuple[str, ...]], code: int, out: bytes, err: bytes, path_of: Callable[[tuple[str, ...]], str]
) -> tuple[dict[tuple[str, ...], RemoteStat | None], dict[tuple[str, ...], bytes]]:
    """What ``SNAPSHOT_SCRIPT`` printed: a line of each path's kind (``E``, ``L`` or ``-``), every link's target
    (NUL-terminated; one write for all kinds: each write is a frame on the engine's stream); when any exists, a
    ``stat`` line of ``/proc/self/.`` (created as the script ran: the time then, on the files' own clock) and one
    per existing path; then a ``tar`` of the regular files small enough to read.

    A file whose change time is before that time gets a ``version`` (inode, size, times): any later change of
    it gets a later change time, so bytes read with that version are its bytes for as long as it has it."""
    kinds, _, body = out.partition(b"\n")
    if code == 5 or len(kinds) != len(paths):
        raise Conflict(f"the files could not be examined: {message(err)}", code="io_error")
    links = kinds.count(b"L")
    fields = body.split(b"\0", links)
    targets = iter(fields[:links])
    existing = [
        (parts, next(targets, b"") if kind == ord("L") else b"")
        for parts, kind in zip(paths, kinds, strict=True)
        if kind != ord("-")
    ]
    rest = fields[-1].split(b"\n", len(existing) + 1) if existing else []
    if len(fields) != links + 1 or (existing and len(rest) < len(existing) + 2):
        raise Conflict(f"the files could not be examined: {message(err)}", code="io_error")
    found: dict[tuple[str, ...], RemoteStat | None] = dict.fromkeys(paths)
    now = rest[0].decode("ascii", "replace").split(" ", 4)[-1] if existing else ""
    for (parts, target), line in zip(existing, rest[1:], strict=False):
        mode_hex, size, mtime, inode, changed = line.decode("ascii", "replace").split(" ", 4)
        mode = int(mode_hex, 16)
        version = f"{inode} {size} {mtime} {changed}" if changed < now else ""
        link = target.decode("utf-8", "surrogateescape")
        found[parts] = RemoteStat(mode_kind(mode), int(size), mode & 0o7777, float(mtime), link, version)
    datas: dict[tuple[str, ...], bytes] = {}
    archive_bytes = rest[-1] if existing else b""
    if archive_bytes and code == 0:
        names = {path_of(parts).lstrip("/"): parts for parts in paths}
        with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode="r:") as archive:
            for member in archive:
                wanted = names.get(member.name)
                handle = archive.extractfile(member) if member.isreg() else None
                if wanted is not None and handle is not None:
                    datas[wanted] = handle.read()
    return found, datas


def parse_listing(code: int, out: bytes, err: bytes, parts: tuple[str, ...]) -> list[tuple[str, RemoteStat]] | None:
    """What ``LIST_SCRIPT`` printed (names NUL-separated on stdout, their stats line by line on stderr); None
    when the two disagree because the directory changed meanwhile (list again)."""
    if code == 4:
        raise NotFound(f"{join(parts)!r} does not exist")
    names = [name.removeprefix("./") for name in out.decode("utf-8", "surrogateescape").split("\0") if name]
    stats = err.decode("ascii", "replace").splitlines()
    if len(names) != len(stats):
        return None
    found: list[tuple[str, RemoteStat]] = []
    for name, line in zip(names, stats, strict=True):
        mode_hex, size, mtime = line.split()
        mode = int(mode_hex, 16)
        found.append((name, RemoteStat(mode_kind(mode), int(size), mode & 0o7777, float(mtime))))
    return found


__all__ = [
    "BATCH_SCRIPT",
    "LIST_SCRIPT",
    "MANIFEST_SCRIPT",
    "MOVE_SCRIPT",
    "SNAPSHOT_SCRIPT",
    "WRITE_SCRIPT",
    "batch_request",
    "failure",
    "message",
    "mode_kind",
    "parse_listing",
    "parse_snapshot",
    "remote_stat",
    "tar_entries",
    "tar_tree",
]
