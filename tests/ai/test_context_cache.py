"""Cached masking of AI context: same prompt as without the cache, never stale, never a secret let through."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.services.ai.context import CodeContext, build_context
from app.services.ai.context_cache import MaskedFiles, MaskedTargets

SECRET_A = "sk-live-0123456789abcdefghijABCDEFGHIJ"  # an OpenAI-style key, recognisable anywhere
SECRET_B = "Zq8#vX2!pL9@wR4$"


def write(root: Path, name: str, text: str, age: float = 3600.0) -> Path:
    """Write ``text`` and date the file ``age`` seconds back (as a checkout leaves files)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def sent(ctx: CodeContext) -> str:
    parts = [ctx.selection, ctx.before, ctx.after, *ctx.related]
    return "\n".join(f"{p.path}:{p.reason}:{p.start_line}-{p.end_line}:{p.truncated}\n{p.text}" for p in parts if p)


def project(root: Path) -> None:
    body = "".join(f"    value_{i} = compute({i})\n" for i in range(60))
    write(root, "pkg/main.py", f"from pkg import helpers\nAPI_KEY = '{SECRET_A}'\n\ndef run():\n{body}")
    write(root, "pkg/helpers.py", f'password = "{SECRET_B}"\nheader = "Bearer {SECRET_A}"\n\ndef compute(x):\n')
    write(root, "pkg/notes.py", "# nothing secret here\n" * 20)


def build(root: Path, cache: MaskedFiles | None, targets: MaskedTargets | None) -> CodeContext:
    return build_context(root, "pkg/main.py", start_line=5, end_line=20, budget=6000, cache=cache, targets=targets)


def test_cached_context_equals_uncached_and_placeholders_are_consistent(tmp_path: Path) -> None:
    project(tmp_path)
    cache, targets = MaskedFiles(), MaskedTargets()
    plain = build(tmp_path, None, None)
    first = build(tmp_path, cache, targets)
    second = build(tmp_path, cache, targets)
    assert cache.misses == 2 and cache.hits == 2  # helpers.py and notes.py, masked once
    assert sent(first) == sent(second) == sent(plain)
    for ctx in (first, second):
        text = sent(ctx)
        assert SECRET_A not in text and SECRET_B not in text
        # one placeholder per value across the target and the cached related file, and it restores
        assert ctx.masker.restore(text).count(SECRET_A) == text.count(ctx.masker.placeholder(SECRET_A))
        assert ctx.masker.count == 2


def test_a_changed_related_file_is_read_again(tmp_path: Path) -> None:
    project(tmp_path)
    cache = MaskedFiles()
    before = build(tmp_path, cache, MaskedTargets())
    assert "compute" in sent(before)
    # same size, new content, new (old) times: the identity changes (inode times), the cache notices
    write(tmp_path, "pkg/helpers.py", f'password = "{SECRET_B}"\nheader = "Bearer {SECRET_A}"\n\ndef compare(x):\n', 60)
    after = build(tmp_path, cache, MaskedTargets())
    assert "compare" in sent(after) and "compute(x)" not in sent(after)
    os.remove(tmp_path / "pkg/helpers.py")
    gone = build(tmp_path, cache, MaskedTargets())
    assert "pkg/helpers.py" not in [s.path for s in gone.related]


def test_recently_written_files_are_not_cached(tmp_path: Path) -> None:
    project(tmp_path)
    write(tmp_path, "pkg/helpers.py", "def compute(x):\n    return x\n", age=0)
    cache = MaskedFiles()
    build(tmp_path, cache, None)
    build(tmp_path, cache, None)
    assert cache.hits == 1  # notes.py only: helpers.py may still change within the file-time granularity


def test_files_with_placeholder_like_text_are_masked_per_request(tmp_path: Path) -> None:
    project(tmp_path)
    write(tmp_path, "pkg/helpers.py", f'doc = "MASKED_SECRET_1 is ours"\npassword = "{SECRET_B}"\n')
    cache, targets = MaskedFiles(), MaskedTargets()
    ctx = build(tmp_path, cache, targets)
    assert sent(ctx) == sent(build(tmp_path, None, None))
    assert SECRET_B not in sent(ctx) and "MASKED_SECRET_1 is ours" in sent(ctx)
    build(tmp_path, cache, targets)
    assert cache.hits == 1  # notes.py; helpers.py is never cached
