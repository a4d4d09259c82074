"""The files service: listing, reads, atomic writes with preconditions, delete, move."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from app.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, PreconditionFailed, UnsupportedMediaType
from app.services import files


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / ".git" / "objects").mkdir(parents=True)
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ws / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (ws / "src" / "app.py").write_text("import pkg\n")
    (ws / "b.txt").write_text("b\n")
    (ws / "A.txt").write_text("a\n")
    (ws / "zdir").mkdir()
    return ws


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tree_directories_first_and_depth(root: Path) -> None:
    top = files.list_tree(root)
    assert [(e.path, e.type) for e in top.entries] == [
        ("src", "dir"),
        ("zdir", "dir"),
        ("A.txt", "file"),
        ("b.txt", "file"),
    ]
    assert not top.truncated
    deep = files.list_tree(root, "", depth=3)
    assert [e.path for e in deep.entries] == [
        "src",
        "src/pkg",
        "src/pkg/mod.py",
        "src/app.py",
        "zdir",
        "A.txt",
        "b.txt",
    ]
    entry = next(e for e in deep.entries if e.path == "src/pkg/mod.py")
    assert entry.name == "mod.py" and entry.size == 6 and entry.mtime > 0
    assert [e.path for e in files.list_tree(root, "src/pkg").entries] == ["src/pkg/mod.py"]


def test_tree_hides_git_unless_asked(root: Path) -> None:
    assert ".git" not in [e.name for e in files.list_tree(root, "", depth=3).entries]
    shown = files.list_tree(root, "", depth=2, include_git=True)
    assert {".git", ".git/HEAD", ".git/objects"} <= {e.path for e in shown.entries}


def test_tree_cap_keeps_shallow_entries(root: Path) -> None:
    for i in range(30):
        (root / "zdir" / f"f{i:02d}").write_text("x")
    capped = files.list_tree(root, "", depth=5, max_entries=10)
    assert capped.truncated and len(capped.entries) == 10
    assert {"src", "zdir", "A.txt", "b.txt"} <= {e.path for e in capped.entries}


def test_tree_errors(root: Path) -> None:
    with pytest.raises(NotFound):
        files.list_tree(root, "missing")
    with pytest.raises(Conflict):
        files.list_tree(root, "A.txt")
    with pytest.raises(BadRequest):
        files.list_tree(root, "", depth=0)
    with pytest.raises(NotFound):
        files.list_tree(root.parent / "nope")


def test_read_text_and_raw(root: Path) -> None:
    text = files.read_text(root, "src/app.py")
    assert text.content == "import pkg\n" and text.sha256 == sha(b"import pkg\n") and text.size == 11
    (root / "crlf.txt").write_bytes(b"a\r\nb\r\n\xef\xbb\xbfbom")
    assert files.read_text(root, "crlf.txt").content == "a\r\nb\r\n\ufeffbom"
    (root / "bin").write_bytes(b"\x89PNG\x00\x01")
    with pytest.raises(UnsupportedMediaType):
        files.read_text(root, "bin")
    (root / "latin1").write_bytes("café".encode("latin-1"))
    with pytest.raises(UnsupportedMediaType):
        files.read_text(root, "latin1")
    raw = files.read_raw(root, "bin")
    assert raw.data == b"\x89PNG\x00\x01" and raw.sha256 == sha(raw.data)
    with pytest.raises(Conflict):
        files.read_text(root, "src")
    with pytest.raises(NotFound):
        files.read_text(root, "nope.txt")


def test_read_limit(root: Path) -> None:
    (root / "big").write_bytes(b"x" * 5000)
    with pytest.raises(PayloadTooLarge):
        files.read_raw(root, "big", max_bytes=4096)
    assert files.read_raw(root, "big", max_bytes=5000).size == 5000


def test_write_creates_parents_and_is_atomic(root: Path) -> None:
    result = files.write_file(root, "new/dir/file.txt", b"hello\n")
    assert result.created and result.sha256 == sha(b"hello\n") and result.previous_sha256 is None
    assert (root / "new" / "dir" / "file.txt").read_bytes() == b"hello\n"
    again = files.write_file(root, "new/dir/file.txt", b"bye\n")
    assert not again.created and again.previous_sha256 == sha(b"hello\n")
    assert not [n for n in os.listdir(root / "new" / "dir") if n.startswith(".codehub-")]


def test_write_keeps_permissions_and_replaces_inode(root: Path) -> None:
    script = root / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    outside = root.parent / "hardlinked"
    os.link(script, outside)
    files.write_file(root, "run.sh", b"#!/bin/sh\necho hi\n")
    assert script.stat().st_mode & 0o777 == 0o755
    assert outside.read_text() == "#!/bin/sh\n"  # a hard link elsewhere is never written through


def test_write_preconditions(root: Path) -> None:
    current = sha(b"b\n")
    with pytest.raises(PreconditionFailed) as caught:
        files.write_file(root, "b.txt", b"x", if_match="0" * 64)
    assert caught.value.extra["current_sha256"] == current
    assert files.write_file(root, "b.txt", b"x\n", if_match=current.upper()).sha256 == sha(b"x\n")
    with pytest.raises(PreconditionFailed):
        files.write_file(root, "b.txt", b"y", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        files.write_file(root, "missing.txt", b"y", if_match=current)
    with pytest.raises(PreconditionFailed):
        files.write_file(root, "missing-dir/x.txt", b"y", if_match=current)
    assert not (root / "missing-dir").exists()
    assert files.write_file(root, "fresh.txt", b"y", if_none_match=True).created


def test_write_refusals(root: Path) -> None:
    with pytest.raises(PayloadTooLarge):
        files.write_file(root, "big", b"x" * 2048, max_bytes=1024)
    with pytest.raises(Conflict):
        files.write_file(root, "src", b"x")
    with pytest.raises(Conflict):
        files.write_file(root, "A.txt/child", b"x")
    with pytest.raises(BadRequest):
        files.write_file(root, "", b"x")


def test_delete(root: Path) -> None:
    removed = files.delete_path(root, "src/app.py")
    assert removed.type == "file" and removed.sha256 == sha(b"import pkg\n") and removed.size == 11
    assert not (root / "src" / "app.py").exists()
    with pytest.raises(Conflict) as caught:
        files.delete_path(root, "src")
    assert caught.value.code == "directory_not_empty"
    assert files.delete_path(root, "zdir").type == "dir"
    with pytest.raises(NotFound):
        files.delete_path(root, "zdir")


def test_move(root: Path) -> None:
    moved = files.move_path(root, "A.txt", "docs/a.txt")
    assert (moved.from_path, moved.to_path, moved.type) == ("A.txt", "docs/a.txt", "file")
    assert (root / "docs" / "a.txt").read_text() == "a\n"
    with pytest.raises(Conflict):
        files.move_path(root, "b.txt", "docs/a.txt")
    files.move_path(root, "b.txt", "docs/a.txt", overwrite=True)
    assert (root / "docs" / "a.txt").read_text() == "b\n"
    with pytest.raises(BadRequest):
        files.move_path(root, "src", "src/pkg/inner")
    with pytest.raises(BadRequest):
        files.move_path(root, "src", "src/new/inner")
    assert not (root / "src" / "new").exists()
    with pytest.raises(NotFound):
        files.move_path(root, "nope", "x")
    assert files.move_path(root, "src", "lib").type == "dir"
    assert (root / "lib" / "pkg" / "mod.py").exists()
