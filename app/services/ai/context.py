"""Context for an AI request: the selected code plus a bounded amount of related code from the workspace.

Within a character budget, in this order: the selection (or whole file), code around it in the same file,
files it imports (Python, JavaScript/TypeScript, Go; best effort, workspace files only), then neighbours
in its directory. Every piece is masked (``app.services.ai.redact``) before it can leave the hub; files whose
names say they hold secrets (``.env``, keys, credentials) are never added as related context. All reads go
through ``app.services.files.operations`` (safe resolution inside the workspace root). Blocking: run it in a thread.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.errors import DomainError, PayloadTooLarge, Unprocessable
from app.services import files
from app.services.ai.context_cache import MASKED_FILES, MASKED_TARGETS, MaskedFiles, MaskedHead, MaskedTargets
from app.services.ai.redact import SecretMasker, in_private_key
from app.services.files.storage import BlockingFiles

_LANGUAGE_TABLE = """
py=python pyi=python js=javascript mjs=javascript cjs=javascript jsx=jsx ts=typescript mts=typescript
cts=typescript tsx=tsx go=go rs=rust java=java kt=kotlin c=c h=c cc=cpp cpp=cpp hpp=cpp cs=csharp rb=ruby
php=php swift=swift scala=scala sh=shell bash=shell zsh=shell sql=sql html=html css=css scss=scss vue=vue
svelte=svelte md=markdown json=json yaml=yaml yml=yaml toml=toml ini=ini cfg=ini conf=conf
properties=properties xml=xml lua=lua r=r dart=dart ex=elixir exs=elixir erl=erlang hs=haskell ml=ocaml tf=hcl
proto=protobuf
"""
_LANGUAGES = {"." + ext: name for ext, _, name in (item.partition("=") for item in _LANGUAGE_TABLE.split())}
_NAMED = {"dockerfile": "dockerfile", "makefile": "makefile", "justfile": "makefile", "gemfile": "ruby"}
_SECRET_FILE = re.compile(
    r"(^\.env(\..*)?$|\.(pem|key|p12|pfx|jks|keystore|kdbx|asc|gpg)$|^id_(rsa|dsa|ecdsa|ed25519)|"
    r"^\.(npmrc|pypirc|netrc|git-credentials|htpasswd)$|credentials|secret)",
    re.IGNORECASE,
)
_SKIPPED_FILE = re.compile(
    r"(\.lock$|^package-lock\.json$|^pnpm-lock\.yaml$|^go\.sum$|\.min\.(js|css)$|\.map$|\.svg$)", re.IGNORECASE
)
_JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".d.ts", ".vue", ".svelte")
MAX_RELATED = 8
MAX_RELATED_BYTES = 262_144  # bigger related files are skipped, not read


def language_of(path: str) -> str:
    """Language name for a path, from its extension (or well-known file name); "" when unknown."""
    name = posixpath.basename(path).lower()
    if name.startswith(".env"):
        return "dotenv"
    if name in _NAMED or name.startswith("dockerfile"):
        return _NAMED.get(name, "dockerfile")
    return _LANGUAGES.get(posixpath.splitext(name)[1], "")


@dataclass
class Snippet:
    """A piece of workspace text as sent (masked); lines are 1-based and inclusive."""

    path: str
    language: str
    text: str
    start_line: int
    end_line: int
    reason: str  # selection | before | after | import | neighbour
    truncated: bool = False


@dataclass
class CodeContext:
    """Everything an AI prompt needs about the code, plus what the hub needs to turn an answer into a diff."""

    file: files.TextFile  # the target file as read (NOT masked; never sent)
    language: str
    start_line: int
    end_line: int
    line_count: int
    whole_file: bool
    selection: Snippet
    before: Snippet | None  # lines just above the selection
    after: Snippet | None  # lines just below it
    related: list[Snippet]
    masker: SecretMasker
    budget: int
    chars: int = 0


def split_lines(text: str) -> list[str]:
    """Lines with their terminators kept; only ``\\n`` ends a line (``\\r\\n`` keeps its ``\\r``)."""
    lines = text.split("\n")
    last = lines.pop()
    result = [line + "\n" for line in lines]
    if last:
        result.append(last)
    return result


def _read(root: Path, path: str, max_bytes: int) -> files.TextFile | None:
    """The one place related files are read (safe paths); None when missing, binary or too big."""
    try:
        return files.read_text(root, path, max_bytes=max_bytes)
    except DomainError:
        return None


def _list_dir(root: Path, directory: str, view: BlockingFiles | None = None) -> list[files.Entry]:
    try:
        if view is not None:
            return view.list_dir(directory, 500).entries
        return files.list_tree(root, directory, 1, max_entries=500).entries
    except DomainError:
        return []


def _view_reader(view: BlockingFiles) -> Callable[[Path, str, int], files.TextFile | None]:
    """Related-file reads through a storage's blocking view (files that are not on the hub's disk)."""

    def read(_root: Path, path: str, max_bytes: int) -> files.TextFile | None:
        try:
            return view.read_text(path, max_bytes)
        except DomainError:
            return None

    return read


def python_imports(text: str, path: str) -> list[str]:
    """Workspace paths a Python file may import (candidates; the caller keeps those that exist)."""
    here = posixpath.dirname(path)
    found: list[str] = []
    for m in re.finditer(
        r"^[ \t]*(?:from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+\(?([\w, \t*]+)|import[ \t]+([\w., \t]+))",
        text,
        re.MULTILINE,
    ):
        dots, module, names, plain = m.groups()
        if plain is not None:
            modules = [part.split()[0] for part in plain.split(",") if part.strip()]
            bases = [""]
        else:
            modules = [module] if module else [""]
            if dots:
                base = here
                for _ in range(len(dots) - 1):
                    base = posixpath.dirname(base)
                bases = [base]
            else:
                bases = ["", "src"]
            subs = [n.split()[0] for n in names.split(",") if n.strip() and n.strip() != "*"]
            modules += [f"{modules[0]}.{n}" if modules[0] else n for n in subs]
        for base in bases + ([here] if plain is not None or not dots else []):
            for mod in modules:
                if not mod:
                    continue
                stem = posixpath.join(base, *mod.split("."))
                found += [stem + ".py", stem + "/__init__.py"]
    return found


def js_imports(text: str, path: str) -> list[str]:
    """Workspace paths a JavaScript/TypeScript file may import (relative specifiers only)."""
    here = posixpath.dirname(path)
    specs = re.findall(
        r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*|\bexport\s+\*\s+from\s*)['"](\.{1,2}/[^'"\n]+)['"]""",
        text,
    )
    found: list[str] = []
    for spec in specs:
        stem = posixpath.normpath(posixpath.join(here, spec))
        root, ext = posixpath.splitext(stem)
        if ext in (".js", ".jsx", ".mjs", ".cjs"):
            found += [stem, root + ".ts", root + ".tsx"]
        elif ext in _JS_EXTENSIONS:
            found.append(stem)
        else:
            found += [stem + e for e in _JS_EXTENSIONS] + [f"{stem}/index{e}" for e in _JS_EXTENSIONS[:4]]
    return found


def go_imports(text: str, module: str | None) -> list[str]:
    """Workspace directories of the Go packages a file imports (those under the go.mod module path)."""
    if not module:
        return []
    block = re.search(r"^import\s*\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    lines = re.findall(r'^import\s+(?:[\w.]+\s+)?"([^"]+)"', text, re.MULTILINE)
    if block:
        lines += re.findall(r'"([^"]+)"', block.group(1))
    return [imp[len(module) + 1 :] for imp in lines if imp.startswith(module + "/")]


_CANDIDATES: dict[tuple[str, str, str], list[str]] = {}


def _import_candidates(language: str, text: str, path: str, sha256: str) -> list[str]:
    """Normalized, unique import candidates of a Python or JS/TS file, remembered per file content."""
    key = (language, path, sha256)
    found = _CANDIDATES.get(key)
    if found is None:
        raw = python_imports(text, path) if language == "python" else js_imports(text, path)
        found = _unique_normal(raw)
        if len(_CANDIDATES) >= 1024:
            _CANDIDATES.clear()
        _CANDIDATES[key] = found
    return found


def _unique_normal(paths: list[str]) -> list[str]:
    return [normal for normal in dict.fromkeys(_normal(p) for p in paths) if normal]


def _normal(path: str) -> str | None:
    path = posixpath.normpath(path).lstrip("/")
    return None if path in (".", "") or path.startswith("..") else path


class _Builder:
    def __init__(
        self,
        root: Path,
        target: files.TextFile,
        masker: SecretMasker,
        budget: int,
        max_bytes: int,
        read: Callable[[Path, str, int], files.TextFile | None],
        cache: MaskedFiles | None,
        view: BlockingFiles | None = None,
    ) -> None:
        self.root, self.target, self.masker, self.max_bytes, self.read = root, target, masker, max_bytes, read
        self.cache, self.view = cache, view
        self.head_limit = budget + budget // 4 + 200  # the most ``add`` ever sends of a file, for any budget left
        self.left = budget
        self.seen = {target.path}
        self.related: list[Snippet] = []

    def add(self, path: str, reason: str) -> None:
        path = _normal(path) or ""
        name = posixpath.basename(path)
        if (
            not path
            or path in self.seen
            or len(self.related) >= MAX_RELATED
            or self.left < 200
            or _SECRET_FILE.search(name)
            or _SKIPPED_FILE.search(name)
        ):
            return
        self.seen.add(path)
        language = language_of(path)
        cap = min(self.left, max(2000, self.left // 2))
        need = cap + cap // 4 + 200  # mask only what can be sent
        max_bytes = min(self.max_bytes, MAX_RELATED_BYTES)
        found = (
            self.cache.get(self.root, path, self.head_limit, max_bytes, language)
            if self.cache is not None
            else self.read(self.root, path, max_bytes)
        )
        if isinstance(found, MaskedHead):
            canonical, masked, cut = found.path, found.for_masker(self.masker), found.raw_chars > need
        elif found is not None:
            head, cut, _ = _head(found.content, need)
            canonical, masked = found.path, self.masker.mask(head, language)
        else:
            return
        if not masked.strip():
            return
        text, truncated, last = _head(masked, cap)
        self.related.append(Snippet(canonical, language, text, 1, last, reason, truncated or cut))
        self.left -= len(text)

    def imports(self) -> None:
        language = language_of(self.target.path)
        text, path = self.target.content, self.target.path
        if language in ("python", "javascript", "jsx", "typescript", "tsx", "vue", "svelte"):
            candidates = _import_candidates(language, text, path, self.target.sha256)
        elif language == "go":
            gomod = self.read(self.root, "go.mod", 65536)
            match = re.search(r"^module\s+(\S+)", gomod.content, re.MULTILINE) if gomod else None
            candidates = []
            for directory in go_imports(text, match.group(1) if match else None):
                candidates += [
                    e.path
                    for e in _list_dir(self.root, directory, self.view)
                    if e.type == "file" and e.name.endswith(".go") and not e.name.endswith("_test.go")
                ]
            candidates = _unique_normal(candidates)
        else:
            candidates = []
        base = f"{self.root}/"
        for normal in candidates:
            # a stat first: most candidates (stdlib, third-party modules) do not exist in the workspace
            if normal not in self.seen and (self.view is not None or os.path.isfile(base + normal)):
                self.add(normal, "import")

    def neighbours(self) -> None:
        path = self.target.path
        directory, name = posixpath.dirname(path), posixpath.basename(path)
        stem = posixpath.splitext(name)[0]
        language = language_of(path)
        entries = [e for e in _list_dir(self.root, directory, self.view) if e.type == "file" and e.path != path]
        entries.sort(
            key=lambda e: (
                language_of(e.path) != language or not language,
                not (stem and stem in e.name),
                e.size,
                e.name,
            )
        )
        for entry in entries:
            if entry.size <= self.max_bytes:
                self.add(entry.path, "neighbour")


def _head(text: str, cap: int) -> tuple[str, bool, int]:
    """At most ``cap`` characters of ``text``, cut at a line end; (text, truncated, last line number)."""
    if len(text) <= cap:
        return text, False, len(split_lines(text))
    cut = text.rfind("\n", 0, cap)
    head = text[: cut + 1] if cut > 0 else text[:cap]
    return head, True, len(split_lines(head))


def _window(lines: list[str], start: int, end: int, cap: int) -> tuple[int, int]:
    """Grow [start, end) (0-based) line by line, alternating before/after, while it fits in ``cap``."""
    size = 0
    lo, hi = start, end
    while lo > 0 or hi < len(lines):
        grew = False
        for side in ("before", "after"):
            if side == "before" and lo > 0 and size + len(lines[lo - 1]) <= cap:
                lo, size, grew = lo - 1, size + len(lines[lo - 1]), True
            elif side == "after" and hi < len(lines) and size + len(lines[hi]) <= cap:
                hi, size, grew = hi + 1, size + len(lines[hi]), True
        if not grew:
            break
    return lo, hi


def build_context(
    root: Path,
    path: str,
    *,
    start_line: int | None = None,
    end_line: int | None = None,
    budget: int = 24_000,
    max_bytes: int = 10_485_760,
    must_fit: bool = False,
    read: Callable[[Path, str, int], files.TextFile | None] | None = None,
    cache: MaskedFiles | None = MASKED_FILES,
    targets: MaskedTargets | None = MASKED_TARGETS,
    view: BlockingFiles | None = None,
) -> CodeContext:
    """Build the masked context for ``path`` (lines ``start_line``..``end_line``, 1-based, inclusive).

    ``must_fit`` (rewrites): a selection larger than the budget raises 413 instead of being cut. Related
    files come masked from ``cache`` (``app.services.ai.context_cache``) unless a ``read`` function is given,
    and the target's lines from ``targets`` (by content hash). ``view``: read every file through a storage's
    blocking view instead of ``root`` (files that are not on the hub's disk; no related-file cache).
    Raises the files API errors for the target itself (404, 415 binary, 413 too big) and 422 for a bad range.
    """
    if view is not None:
        target, read, cache = view.read_text(path, max_bytes), _view_reader(view), None
    else:
        target = files.read_text(root, path, max_bytes=max_bytes)
    lines = split_lines(target.content)
    whole = start_line is None and end_line is None
    start = 1 if start_line is None else start_line
    end = (len(lines) if start_line is None else start) if end_line is None else end_line
    if start < 1 or end < start or (lines and start > len(lines)) or (not lines and not whole):
        raise Unprocessable(
            f"line range {start}-{end} is outside {target.path!r} ({len(lines)} lines)", code="bad_range"
        )
    end = min(end, len(lines))
    language = language_of(target.path)
    masker = SecretMasker()
    raw = "".join(lines[start - 1 : end])
    cached = targets.get(target, lines, language) if targets is not None else None

    def mask_lines(lo: int, hi: int, text: str | None = None) -> str:
        """Lines lo..hi (0-based, exclusive) masked; ``text`` when they were cut mid-line."""
        if cached is not None and text is None:
            return cached.join(masker, lo, hi)
        chunk = "".join(lines[lo:hi]) if text is None else text
        return masker.mask(chunk, language, in_key=in_private_key("".join(lines[:lo])))

    head, _, _ = _head(raw, 2 * budget)
    head_lines = len(split_lines(head))
    whole_lines = head.endswith("\n") or len(head) == len(raw)
    selected = mask_lines(start - 1, start - 1 + head_lines, None if whole_lines else head)
    if (len(selected) > budget or len(raw) > 2 * budget) and must_fit:
        raise PayloadTooLarge(
            f"the selection ({max(len(raw), len(selected))} characters) is larger than the AI context budget "
            f"(CODEHUB_LLM_CONTEXT_CHARS={budget})",
            code="selection_too_large",
        )
    text, truncated, _ = _head(selected, budget)
    truncated = truncated or len(head) < len(raw)
    selection = Snippet(target.path, language, text, start, end, "selection", truncated)
    left = budget - len(text)
    before = after = None
    if not whole and left > 200:
        lo, hi = _window(lines, start - 1, end, left // 2)
        if lo < start - 1:
            text = mask_lines(lo, start - 1)
            before = Snippet(target.path, language, text, lo + 1, start - 1, "before", lo > 0)
            left -= len(text)
        if hi > end:
            text = mask_lines(end, hi)
            after = Snippet(target.path, language, text, end + 1, hi, "after", hi < len(lines))
            left -= len(text)
    builder = _Builder(root, target, masker, left, max_bytes, read or _read, None if read else cache, view)
    builder.imports()
    builder.neighbours()
    for snippet in (selection, before, after, *builder.related):
        if snippet is not None:  # secrets found late (in a related file) are masked everywhere
            snippet.text = masker.mask_known(snippet.text)
    chars = budget - builder.left
    return CodeContext(
        file=target,
        language=language,
        start_line=start,
        end_line=end,
        line_count=len(lines),
        whole_file=whole,
        selection=selection,
        before=before,
        after=after,
        related=builder.related,
        masker=masker,
        budget=budget,
        chars=chars,
    )
