"""A corpus of hostile paths thrown at every file operation of every storage backend (a local directory, a Docker
volume): nothing outside the root is read or written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.errors import DomainError
from app.services import files
from app.services.files.patches import PatchLimits
from app.services.files.paths import normalize
from tests.support.files import SENTINEL, Sandbox
from tests.support.storage import Backend

# Paths that must be refused outright (4xx), whatever the operation.
REFUSED = [
    # absolute
    "/etc/passwd",
    "/",
    "//etc/passwd",
    "/tmp/x",
    "/dev/null",
    # dot-dot
    "..",
    "../",
    "../outside/secret.txt",
    "../../etc/passwd",
    "a/../../outside/secret.txt",
    "src/../../outside/secret.txt",
    "./../outside",
    "src/deep/../../../outside",
    "src/..",
    # percent-encoded traversal (what survives one round of URL decoding)
    "%2e%2e/outside/secret.txt",
    "%2E%2E%2Foutside%2Fsecret.txt",
    "..%2foutside",
    "%2e%2e%5coutside",
    "%252e%252e/outside",
    "..%252f..%252fetc",
    "%c0%ae%c0%ae/outside",
    "src%c0%afx",
    "%e0%80%ae%e0%80%ae/x",
    "a%00b",
    "%0a",
    # NUL and control characters, odd separators
    "a\x00b",
    "secret.txt\x00.png",
    "\x00",
    "a\nb",
    "a\rb",
    "tab\there",
    "\x1b[31mred",
    "del\x7f",
    "c1\x85",
    "line\u2028sep",
    "\u202eevil.txt",
    "lone\udc80surrogate",
    # backslashes
    "..\\outside\\secret.txt",
    "\\etc\\passwd",
    "a\\..\\..\\x",
    "C:\\Windows\\win.ini",
    # length
    "a" * 256,
    "x/" * 300 + "y",
    "/".join(["n" * 255] * 20),
    # symlinks leaving the root
    "link_out_dir/secret.txt",
    "link_out_dir/dir/secret.txt",
    "link_abs",
    "link_abs_dir/secret.txt",
    "link_etc/passwd",
    "link_devnull",
    "link_loop_a",
    "link_loop_a/x",
    "link_dotdot/outside/secret.txt",
    "src/up/secret.txt",
    "src/up_abs/etc/passwd",
    "link_in/up/secret.txt",
    "chain_a/secret.txt",
    "dangling_out",
    # special files
    "fifo",
    "sock",
]

# Entries that are themselves links or special files: delete and move act on the entry (like rm, mv).
ENTRY_ITSELF = {"link_abs", "link_devnull", "link_loop_a", "dangling_out", "fifo", "sock"}

# Literal names that look odd but stay inside the root: allowed, and still nothing leaks.
INSIDE = [
    "~/.ssh/id_rsa",
    "$HOME/x",
    "....//....//etc",
    "...",
    "100%.txt",
    "a%20b.txt",
    "\u2215etc\u2215passwd",
    "\uff0e\uff0e/\uff0e\uff0e/etc",
    "link_in/main.py",
    "link_in_file",
    "link_self/README.md",
    "src//deep///data.txt",
    "./README.md",
]


def _ops(backend: Backend) -> dict[str, Callable[[str], object]]:
    storage, call, limit = backend.storage, backend.call, files.DEFAULT_MAX_FILE_BYTES
    return {
        "read_text": lambda p: call(storage.read_text, p, max_bytes=limit),
        "read_raw": lambda p: call(storage.read_raw, p, max_bytes=limit),
        "write": lambda p: call(storage.write_file, p, b"PWNED\n"),
        "write_if_match": lambda p: call(storage.write_file, p, b"PWNED\n", if_match="0" * 64),
        "create_only": lambda p: call(storage.write_file, p, b"PWNED\n", if_none_match=True),
        "tree": lambda p: call(storage.list_tree, p, 3, include_git=False, max_entries=files.DEFAULT_MAX_TREE_ENTRIES),
        "patch_validate": lambda p: call(storage.validate_patch, _create_diff(p), limits=PatchLimits()),
        "patch_apply": lambda p: call(storage.apply_patch, _create_diff(p), limits=PatchLimits()),
        "move_to": lambda p: call(storage.move_path, "README.md", p),
        # last: for an entry that is itself a link or special file these act on the entry
        "move_from": lambda p: call(storage.move_path, p, "moved-here"),
        "delete": lambda p: call(storage.delete_path, p),
    }


def _quoted(name: str) -> str:
    """A diff header name, C-quoted the way git quotes unusual names."""
    raw = name.encode("utf-8", errors="surrogatepass")
    if not any(b < 0x20 or b >= 0x7F or b in b'"\\' for b in raw):
        return name
    escapes = {9: "\\t", 10: "\\n", 13: "\\r", 34: '\\"', 92: "\\\\"}
    body = "".join(escapes.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}") for b in raw)
    return f'"{body}"'


def _create_diff(path: str) -> str:
    return f"--- /dev/null\n+++ {_quoted('b/' + path)}\n@@ -0,0 +1 @@\n+PWNED\n"


def _run(op: Callable[[str], object], path: str) -> object | DomainError:
    try:
        return op(path)
    except DomainError as exc:
        assert 400 <= exc.status < 500, (path, exc)
        return exc


def test_corpus_is_large_enough() -> None:
    assert len(REFUSED) + len(INSIDE) >= 60
    assert len(set(REFUSED)) == len(REFUSED)


@pytest.mark.parametrize("path", REFUSED, ids=lambda p: repr(p)[:40])
def test_refused_paths_touch_nothing_outside(backend: Backend, sandbox: Sandbox, path: str) -> None:
    outside_before = backend.outside_state()
    for name, op in _ops(backend).items():
        outcome = _run(op, path)
        if name == "patch_validate" and not isinstance(outcome, DomainError):
            assert not outcome.ok, (path, outcome)  # type: ignore[attr-defined]
            continue
        if name in ("delete", "move_from") and path in ENTRY_ITSELF and not isinstance(outcome, DomainError):
            assert outcome.type in ("symlink", "other"), outcome  # type: ignore[attr-defined]
            continue
        assert isinstance(outcome, DomainError), (name, path, outcome)
        assert b"SENTINEL" not in repr(outcome).encode(), (name, path)
    assert backend.outside_state() == outside_before
    assert (sandbox.outside / "secret.txt").read_bytes() == SENTINEL


@pytest.mark.parametrize("path", INSIDE, ids=lambda p: repr(p)[:40])
def test_odd_but_inside_paths_stay_inside(backend: Backend, path: str) -> None:
    outside_before = backend.outside_state()
    for op in _ops(backend).values():
        _run(op, path)
        if backend.kind_of("README.md") is None:
            _run(lambda p: backend.call(backend.storage.move_path, p, "README.md"), path)
    assert backend.outside_state() == outside_before


def test_text_checks_accept_normal_names() -> None:
    for good in ["a.txt", "dir/sub/file.py", "100%", "50%off", "%20", "名前.txt", "emoji-😀.md", ".env", ".git/config"]:
        assert normalize(good)
    assert normalize("", allow_root=True) == ()


def test_device_file_is_refused_without_opening(backend: Backend) -> None:
    if backend.kind_of("chardev") is None:
        pytest.skip("cannot create a device node here (volumes never get one)")
    for op in ("read_text", "read_raw", "write"):
        assert isinstance(_run(_ops(backend)[op], "chardev"), DomainError)


def test_fifo_never_blocks(backend: Backend) -> None:
    for op in ("read_text", "read_raw", "write", "write_if_match"):
        outcome = _run(_ops(backend)[op], "fifo")
        assert isinstance(outcome, DomainError)
        assert outcome.code == "bad_path"
    assert backend.kind_of("fifo") == "other"


def test_nothing_new_appears_outside(backend: Backend) -> None:
    before = backend.top_names()
    for path in REFUSED + INSIDE:
        for op in _ops(backend).values():
            _run(op, path)
    assert backend.top_names() == before
    assert "outside/new.txt" not in backend.outside_state()
    assert not Path("/moved-here").exists()
