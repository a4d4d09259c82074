"""The storage seam's guarantees on every backend (a local directory, a Docker volume, a Kubernetes claim):
ETag = sha256 with If-Match / If-None-Match, listings, moves and deletes, patches applied to every file or to
none, and a directory swapped for a link between the hub's check and the commit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from app.errors import Conflict, DomainError, NotFound, PreconditionFailed
from app.services.ai.context import CodeContext, build_context
from app.services.files.patches import PatchLimits
from tests.support.storage import Backend

LIMIT = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_etag_is_the_sha256_and_if_match_guards_writes(backend: Backend) -> None:
    s, call = backend.storage, backend.call
    read = call(s.read_raw, "README.md", max_bytes=LIMIT)
    assert read.sha256 == sha(read.data) == sha(backend.read("README.md"))
    with pytest.raises(PreconditionFailed) as stale:
        call(s.write_file, "README.md", b"lost\n", if_match="0" * 64)
    assert stale.value.extra["current_sha256"] == read.sha256
    written = call(s.write_file, "README.md", b"new\n", if_match=[read.sha256])
    assert (written.previous_sha256, written.sha256, written.created) == (read.sha256, sha(b"new\n"), False)
    assert backend.read("README.md") == b"new\n"
    with pytest.raises(PreconditionFailed):
        call(s.write_file, "README.md", b"again\n", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        call(s.write_file, "missing.txt", b"x\n", if_match="*")
    made = call(s.write_file, "n/e/w.txt", b"w\n", if_none_match=True)
    assert made.created and backend.read("n/e/w.txt") == b"w\n"
    text = call(s.read_text, "n/e/w.txt", max_bytes=LIMIT)
    assert (text.content, text.sha256, text.size) == ("w\n", sha(b"w\n"), 2)
    with pytest.raises(PreconditionFailed):
        call(s.delete_path, "n/e/w.txt", if_match="0" * 64)
    assert call(s.delete_path, "n/e/w.txt", if_match=sha(b"w\n")).sha256 == sha(b"w\n")
    assert backend.kind_of("n/e/w.txt") is None


def test_listing_move_and_delete(backend: Backend) -> None:
    s, call = backend.storage, backend.call
    tree = call(s.list_tree, "src", 2, include_git=False, max_entries=100)
    assert [(e.path, e.type) for e in tree.entries][:3] == [
        ("src/deep", "dir"),
        ("src/deep/data.txt", "file"),
        (
            "src/chain_c",
            "symlink",
        ),
    ]
    cut = call(s.list_tree, "", 3, include_git=False, max_entries=3)
    assert cut.truncated and len(cut.entries) == 3
    via_link = call(s.list_tree, "link_in", 1, include_git=False, max_entries=100)
    assert "link_in/main.py" in [e.path for e in via_link.entries]
    moved = call(s.move_path, "src/deep", "elsewhere/deep")
    assert (moved.to_path, moved.type) == ("elsewhere/deep", "dir")
    assert backend.read("elsewhere/deep/data.txt") == b"data\n"
    call(s.write_file, "taken.txt", b"t\n")
    with pytest.raises(Conflict):
        call(s.move_path, "README.md", "taken.txt")
    call(s.move_path, "README.md", "taken.txt", overwrite=True)
    assert backend.read("taken.txt") == b"# readme\n" and backend.kind_of("README.md") is None
    with pytest.raises(DomainError) as busy:
        call(s.delete_path, "elsewhere")
    assert busy.value.status == 409
    with pytest.raises(NotFound):
        call(s.delete_path, "nothing-here")


def test_patches_apply_to_every_file_or_to_none(backend: Backend) -> None:
    s, call, limits = backend.storage, backend.call, PatchLimits()
    good = (
        "--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# readme\n+# changed\n"
        "--- /dev/null\n+++ b/new/file.txt\n@@ -0,0 +1 @@\n+new\n"
        "--- a/src/deep/data.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-data\n"
    )
    conflicting = good.replace("-# readme", "-# not what is there")
    assert not call(s.validate_patch, conflicting, limits=limits).ok
    with pytest.raises(Conflict) as failed:
        call(s.apply_patch, conflicting, limits=limits)
    assert failed.value.code == "patch_conflict"
    with pytest.raises(Conflict) as based:
        call(s.apply_patch, good, {"README.md": "0" * 64}, limits=limits)
    assert based.value.code == "base_mismatch"
    # nothing of either failed apply was written
    assert backend.read("README.md") == b"# readme\n" and backend.read("src/deep/data.txt") == b"data\n"
    assert backend.kind_of("new") is None
    check = call(s.validate_patch, good, limits=limits)
    assert check.ok and [f.operation for f in check.files] == ["modify", "create", "delete"]
    result = call(s.apply_patch, good, {"README.md": sha(b"# readme\n")}, limits=limits)
    assert [f.sha256 for f in result.files] == [sha(b"# changed\n"), sha(b"new\n"), None]
    assert backend.read("README.md") == b"# changed\n" and backend.read("new/file.txt") == b"new\n"
    assert backend.kind_of("src/deep/data.txt") is None and backend.kind_of("src/deep") is None
    linked = "--- a/link_in/main.py\n+++ b/link_in/main.py\n@@ -1 +1 @@\n-print('hello')\n+x\n"
    assert not call(s.validate_patch, linked, limits=limits).ok  # patches follow no link


def test_ai_context_reads_through_the_storage(backend: Backend) -> None:
    s, call = backend.storage, backend.call
    call(s.write_file, "src/util.py", b"def helper():\n    return 1\n")
    call(s.write_file, "src/app.py", b"from util import helper\n\nprint(helper())\n")

    async def build() -> CodeContext:
        root, view = s.local_root, None if s.local_root is not None else s.blocking()
        return await anyio.to_thread.run_sync(
            lambda: build_context(root or Path("."), "src/app.py", view=view, cache=None, targets=None)
        )

    context = backend.portal.call(build)
    assert context.file.content.startswith("from util import helper")
    related = {snippet.path: snippet.reason for snippet in context.related}
    assert related.get("src/util.py") in ("import", "neighbour")
    assert "src/main.py" in related  # a neighbour, listed through the storage


@pytest.mark.parametrize("operation", ["write", "patch", "move"])
def test_a_parent_swapped_for_a_link_after_the_check_writes_nothing_outside(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """The workspace (its IDE, anyone in it) swaps a checked directory for a link to outside the project between
    the hub's check and the commit: nothing is written through the link."""
    if backend.files is None:
        pytest.skip("the local directory's swaps at each system call: test_races.py")
    s, call, files = backend.storage, backend.call, backend.files
    call(s.write_file, "victim/a.txt", b"one\n")
    call(s.write_file, "loot.txt", b"PWNED\n")
    before = backend.outside_state()
    step = "move" if operation == "move" else "commit"
    original = getattr(files, step)

    async def swapped(*args: object) -> None:
        swap = 'mv -- "$1" "$1.real" && ln -s ../outside "$1"'
        code, _out, err = await files.run(["sh", "-c", swap, "sh", files.path(("victim",))])
        assert code == 0, err
        await original(*args)

    monkeypatch.setattr(files, step, swapped)
    with pytest.raises(DomainError) as refused:
        if operation == "write":
            call(s.write_file, "victim/new.txt", b"PWNED\n")
        elif operation == "move":
            call(s.move_path, "loot.txt", "victim/new.txt")
        else:
            diff = "--- /dev/null\n+++ b/victim/new.txt\n@@ -0,0 +1 @@\n+PWNED\n"
            call(s.apply_patch, diff, limits=PatchLimits())
    assert refused.value.status == 409
    assert backend.outside_state() == before
    assert backend.read("victim.real/a.txt") == b"one\n"
