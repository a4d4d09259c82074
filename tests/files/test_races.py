"""Links and special files swapped in between a check and a use are seen, never followed."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.errors import BadRequest, DomainError
from app.services import files
from app.services.files import patches
from tests.support.files import SENTINEL, Sandbox


def _hook_open(
    monkeypatch: pytest.MonkeyPatch, when: Callable[[str, int], bool], swap: Callable[[], None]
) -> list[int]:
    """Run ``swap`` once, right before the first ``os.open`` call that ``when(name, flags)`` selects."""
    real_open = os.open
    fired: list[int] = []

    def hooked(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if not fired and isinstance(path, str) and when(path, flags):
            fired.append(1)
            swap()
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", hooked)
    return fired


def _swap_dir_for_link(sandbox: Sandbox, name: str) -> Callable[[], None]:
    def swap() -> None:
        os.rename(sandbox.root / name, sandbox.root / f"{name}.real")
        os.symlink("../outside", sandbox.root / name)

    return swap


def test_parent_directory_swapped_for_link_before_open(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    (sandbox.root / "victim").mkdir()
    (sandbox.root / "victim" / "secret.txt").write_text("inside\n")
    before = sandbox.outside_state()
    opens_victim = lambda name, flags: name == "victim" and bool(flags & os.O_DIRECTORY)  # noqa: E731
    fired = _hook_open(monkeypatch, opens_victim, _swap_dir_for_link(sandbox, "victim"))
    with pytest.raises(BadRequest) as caught:
        files.read_text(sandbox.root, "victim/secret.txt")
    assert fired and caught.value.code == "bad_path"
    with pytest.raises(BadRequest):
        files.write_file(sandbox.root, "victim/secret.txt", b"PWNED")
    assert sandbox.outside_state() == before


def test_file_swapped_for_link_between_lstat_and_open(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    target = sandbox.root / "target.txt"
    target.write_text("inside\n")

    def swap() -> None:
        target.unlink()
        target.symlink_to(sandbox.outside / "secret.txt")

    fired = _hook_open(monkeypatch, lambda name, flags: name == "target.txt" and not flags & os.O_DIRECTORY, swap)
    with pytest.raises(BadRequest) as caught:
        files.read_raw(sandbox.root, "target.txt")
    assert fired
    assert b"SENTINEL" not in str(caught.value).encode()


def test_file_swapped_for_fifo_between_lstat_and_open(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    target = sandbox.root / "target.txt"
    target.write_text("inside\n")

    def swap() -> None:
        target.unlink()
        os.mkfifo(target)

    fired = _hook_open(monkeypatch, lambda name, flags: name == "target.txt" and not flags & os.O_DIRECTORY, swap)
    with pytest.raises(BadRequest, match="changed while it was opened"):
        files.read_text(sandbox.root, "target.txt")
    assert fired


def test_write_target_swapped_for_link_before_rename(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    target = sandbox.root / "target.txt"
    target.write_text("old\n")
    real_rename = os.rename

    def rename(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == "target.txt":
            target.unlink()
            target.symlink_to(sandbox.outside / "secret.txt")
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    files.write_file(sandbox.root, "target.txt", b"new\n")
    assert (sandbox.outside / "secret.txt").read_bytes() == SENTINEL
    assert not target.is_symlink() and target.read_bytes() == b"new\n"


def test_parent_swapped_after_resolution_writes_inside(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    (sandbox.root / "victim").mkdir()
    before = sandbox.outside_state()
    swap = _swap_dir_for_link(sandbox, "victim")
    fired = _hook_open(monkeypatch, lambda name, flags: name.startswith(".codehub-"), swap)
    files.write_file(sandbox.root, "victim/new.txt", b"data\n")
    assert fired
    assert sandbox.outside_state() == before
    assert (sandbox.root / "victim.real" / "new.txt").read_bytes() == b"data\n"


def test_patch_parent_swapped_for_link_before_staging(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    (sandbox.root / "victim").mkdir()
    (sandbox.root / "victim" / "a.txt").write_text("one\n")
    before = sandbox.outside_state()
    diff = "--- a/victim/a.txt\n+++ b/victim/a.txt\n@@ -1 +1 @@\n-one\n+two\n"
    assert patches.validate(sandbox.root, diff).ok
    calls: list[int] = []
    fired = _hook_open(
        monkeypatch,
        lambda name, flags: name == "victim" and bool(flags & os.O_DIRECTORY) and len(calls.append(1) or calls) > 1,
        _swap_dir_for_link(sandbox, "victim"),
    )
    try:
        patches.apply(sandbox.root, diff)
    except DomainError as exc:
        assert 400 <= exc.status < 500
    assert fired
    assert sandbox.outside_state() == before


def test_symlink_policy_inside_root(sandbox: Sandbox) -> None:
    root = sandbox.root
    assert files.read_text(root, "link_in/main.py").path == "src/main.py"
    written = files.write_file(root, "link_in_file", b"print('changed')\n")
    assert written.path == "src/main.py"
    assert (root / "link_in_file").is_symlink()
    assert (root / "src" / "main.py").read_bytes() == b"print('changed')\n"
    removed = files.delete_path(root, "link_in_file")
    assert removed.type == "symlink" and (root / "src" / "main.py").exists()
    tree = files.list_tree(root, "", depth=5)
    kinds = {entry.path: entry.type for entry in tree.entries}
    assert kinds["link_out_dir"] == "symlink" and kinds["link_in"] == "symlink"
    assert not any("secret" in entry.path for entry in tree.entries)
    listed = files.list_tree(root, "link_in", depth=1).entries
    names = ["deep", "chain_c", "main.py", "up", "up_abs"]
    assert [e.path for e in listed] == [f"link_in/{name}" for name in names]


def test_patches_do_not_follow_links(sandbox: Sandbox) -> None:
    diff = "--- a/link_in/main.py\n+++ b/link_in/main.py\n@@ -1 +1 @@\n-print('hello')\n+print('bye')\n"
    result = patches.validate(sandbox.root, diff)
    assert not result.ok and "symbolic link" in (result.files[0].error or "")
    diff = "--- a/link_in_file\n+++ b/link_in_file\n@@ -1 +1 @@\n-print('hello')\n+print('bye')\n"
    result = patches.validate(sandbox.root, diff)
    assert not result.ok and "symbolic link" in (result.files[0].error or "")


def test_loops_and_long_chains_end(sandbox: Sandbox, tmp_path: Path) -> None:
    root = sandbox.root
    for i in range(50):
        os.symlink(f"hop{i + 1}", root / f"hop{i}")
    (root / "hop50").write_text("end\n")
    with pytest.raises(BadRequest, match="too many levels"):
        files.read_text(root, "hop0")
    assert files.read_text(root, "hop45").content == "end\n"
