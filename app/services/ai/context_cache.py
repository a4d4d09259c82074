"""Masked related files, cached by file identity: the context builder's repeated work done once per version.

Every AI request on a file adds the same imported and neighbouring files as context, and masking them was
most of the builder's cost (``bench/ai.py``: 2.5 of 3.6 ms for a 60-line selection of a 400-line module).
A file's masked head is kept while its identity (device, inode, size, mtime, ctime) is unchanged, checked on
every use with one stat through the safe-path layer; a hit reads nothing.

Masking with a fresh ``SecretMasker`` numbers the file's secrets 1..k; a hit renumbers them in the
request's masker, so placeholders stay consistent across the whole prompt. Not cached: a file whose text
already holds placeholder-like strings (they could not be told from ours), and a file modified in the last
``RACY_SECONDS`` (file times are coarse, so a same-size rewrite within one clock tick keeps its identity;
git treats its index the same way).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from app.errors import DomainError
from app.services import files
from app.services.ai.redact import PLACEHOLDER, PLACEHOLDER_RE, SecretMasker

RACY_SECONDS = 1.0
MAX_ENTRIES = 512


@dataclass(frozen=True, slots=True)
class MaskedHead:
    """The first ``limit`` characters of a file (cut at a line end), masked by a fresh masker."""

    path: str  # canonical
    identity: tuple[int, ...]
    limit: int
    raw_chars: int  # length of the whole file's text
    text: str
    values: tuple[str, ...]  # placeholder n (1-based) stands for values[n - 1]

    def for_masker(self, masker: SecretMasker) -> str:
        """The masked text with its placeholders renumbered in ``masker`` (which learns the values)."""
        return renumber(self.text, self.values, masker)


def renumber(text: str, values: tuple[str, ...], masker: SecretMasker) -> str:
    """``text`` masked by a fresh masker (placeholder n for ``values[n - 1]``) as ``masker`` would mask it."""
    if values:
        skip = len(PLACEHOLDER)
        text = PLACEHOLDER_RE.sub(lambda m: masker.placeholder(values[int(m.group(0)[skip:]) - 1]), text)
    return masker.mask_known(text)


def mask_head(found: files.TextFile, identity: tuple[int, ...], limit: int, language: str) -> MaskedHead | None:
    """Mask the first ``limit`` characters of ``found``; None when they hold placeholder-like strings."""
    head = found.content
    if len(head) > limit:
        cut = head.rfind("\n", 0, limit)
        head = head[: cut + 1] if cut > 0 else head[:limit]
    if PLACEHOLDER_RE.search(head):
        return None
    fresh = SecretMasker()
    text = fresh.mask(head, language)
    return MaskedHead(found.path, identity, limit, len(found.content), text, fresh.values_in_order())


class MaskedFiles:
    """A bounded, thread-safe LRU of ``MaskedHead`` per (workspace root, path)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[tuple[str, str], MaskedHead] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(
        self, root: Path, path: str, limit: int, max_bytes: int, language: str
    ) -> MaskedHead | files.TextFile | None:
        """The masked head of ``path`` covering ``limit`` characters; the file itself when it cannot be
        cached (the caller masks it); None when it is missing, not a regular text file, or too big."""
        key = (str(root), path)
        with self._lock:
            entry = self._entries.get(key)
        try:
            if entry is not None and entry.limit >= limit:
                _, st = files.stat_regular(root, path)
                if files.file_identity(st) == entry.identity:
                    with self._lock:
                        self._entries.move_to_end(key)
                        self.hits += 1
                    return entry
            found, st = files.read_text_stat(root, path, max_bytes=max_bytes)
        except DomainError:
            return None
        masked = mask_head(found, files.file_identity(st), limit, language)
        if masked is None:
            return found
        with self._lock:
            self.misses += 1
            if time.time() - st.st_mtime > RACY_SECONDS:
                self._entries[key] = masked
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return masked

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0


@dataclass(frozen=True, slots=True)
class MaskedLines:
    """A whole file masked by a fresh masker, line for line (the same line count as the file)."""

    lines: list[str]
    values: tuple[str, ...]

    def join(self, masker: SecretMasker, start: int, end: int) -> str:
        """Lines ``start``..``end`` (0-based, end exclusive), placeholders renumbered in ``masker``."""
        return renumber("".join(self.lines[start:end]), self.values, masker)


class MaskedTargets:
    """Masked lines of target files, by content hash (exact: no staleness), a small thread-safe LRU.

    Only files up to ``max_chars``: a bigger one being edited between requests would pay for masking all of
    it each time, where the builder masks only the windows it sends."""

    def __init__(self, max_entries: int = 64, max_chars: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[str, str], MaskedLines | None] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.max_chars = max_chars

    def get(self, target: files.TextFile, lines: list[str], language: str) -> MaskedLines | None:
        """The masked lines of ``target`` (split as ``lines``); None when it cannot be masked line for line."""
        if self.max_entries <= 0 or len(target.content) > self.max_chars:
            return None
        key = (target.sha256, language)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        masked = _mask_lines(target.content, lines, language)
        with self._lock:
            self._entries[key] = masked
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return masked


def _mask_lines(content: str, lines: list[str], language: str) -> MaskedLines | None:
    if PLACEHOLDER_RE.search(content):
        return None
    fresh = SecretMasker()
    masked = fresh.mask(content, language).split("\n")
    out = [line + "\n" for line in masked[:-1]]
    if masked[-1]:
        out.append(masked[-1])
    if len(out) != len(lines):  # a secret spanning lines (rare): mask per window instead
        return None
    return MaskedLines(out, fresh.values_in_order())


MASKED_TARGETS = MaskedTargets()
MASKED_FILES = MaskedFiles()
