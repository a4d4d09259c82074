"""Context builder: selection, budget, imports, neighbours, masking, and what is never sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import NotFound, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from app.services.ai.context import CodeContext, build_context, go_imports, js_imports, language_of, python_imports
from app.services.ai.redact import SecretMasker
from tests.support.source_trees import SECRETS, secret_workspace, write


def pieces(ctx: CodeContext) -> list[str]:
    return [p.text for p in [ctx.selection, ctx.before, ctx.after, *ctx.related] if p is not None]


def everything(ctx: CodeContext) -> str:
    return "\n".join(pieces(ctx))


def test_selection_range_language_and_surroundings(tmp_path: Path) -> None:
    lines = [f"line_{i} = {i}\n" for i in range(1, 101)]
    write(tmp_path, {"pkg/mod.py": "".join(lines)})
    ctx = build_context(tmp_path, "pkg/mod.py", start_line=50, end_line=52, budget=2000)
    assert ctx.language == "python" and ctx.line_count == 100 and not ctx.whole_file
    assert ctx.selection.text == "".join(lines[49:52])
    assert ctx.before is not None and ctx.after is not None
    assert ctx.before.end_line == 49 and ctx.after.start_line == 53
    assert ctx.before.text.endswith("line_49 = 49\n") and ctx.after.text.startswith("line_53 = 53\n")
    assert ctx.chars <= 2000
    whole = build_context(tmp_path, "pkg/mod.py", budget=100_000)
    assert whole.whole_file and whole.selection.text == "".join(lines) and whole.before is None


def test_budget_bounds_everything(tmp_path: Path) -> None:
    big = "".join(f"def f{i}():\n    return {i}\n" for i in range(2000))
    write(
        tmp_path,
        {
            "a/main.py": "from . import helpers\nimport a.models\n" + big,
            "a/helpers.py": big,
            "a/models.py": big,
            "a/other.py": big,
            "a/z.txt": big,
        },
    )
    for budget in (1000, 5000, 20_000):
        ctx = build_context(tmp_path, "a/main.py", start_line=1, end_line=2, budget=budget)
        assert sum(len(text) for text in pieces(ctx)) <= budget
        assert ctx.chars <= budget
        assert all(s.truncated for s in ctx.related)
    ctx = build_context(tmp_path, "a/main.py", start_line=1, end_line=2, budget=20_000)
    assert [s.path for s in ctx.related][:2] == ["a/helpers.py", "a/models.py"]
    explain_cut = build_context(tmp_path, "a/main.py", budget=1000)
    assert explain_cut.selection.truncated and len(explain_cut.selection.text) <= 1000
    with pytest.raises(PayloadTooLarge):
        build_context(tmp_path, "a/main.py", budget=1000, must_fit=True)


def test_python_imports_are_followed(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app/services/ai.py": "from .llm import Client\nfrom app.services import redact\nimport app.models\n"
            "from ..errors import Oops\nfrom ... import outside\nimport os\n",
            "app/services/llm.py": "class Client: ...\n",
            "app/services/redact.py": "def mask(): ...\n",
            "app/models.py": "class M: ...\n",
            "app/errors.py": "class Oops(Exception): ...\n",
            "app/services/unrelated.py": "x = 1\n",
        },
    )
    ctx = build_context(tmp_path, "app/services/ai.py", budget=10_000)
    imports = [s.path for s in ctx.related if s.reason == "import"]
    assert imports == ["app/services/llm.py", "app/services/redact.py", "app/models.py", "app/errors.py"]
    assert [s.path for s in ctx.related if s.reason == "neighbour"] == ["app/services/unrelated.py"]


def test_js_ts_and_go_import_parsing() -> None:
    source = (
        "import React from 'react';\nimport { a } from './util';\nexport * from \"../lib/x.js\";\n"
        "const y = require('./y');\nconst z = await import('./z.mjs');\nimport './side-effect';\n"
    )
    found = js_imports(source, "src/app/main.ts")
    assert "src/app/util.ts" in found and "src/app/util/index.ts" in found
    assert "src/lib/x.ts" in found and "src/app/y.js" in found and "src/app/z.mjs" in found
    assert "src/app/side-effect.tsx" in found and not any("react" in f for f in found)
    go = 'package main\n\nimport (\n\t"fmt"\n\tdb "example.com/app/internal/db"\n)\nimport "example.com/app/util"\n'
    assert sorted(go_imports(go, "example.com/app")) == ["internal/db", "util"]
    assert python_imports("from x import (a, b)\n", "m.py")[:2] == ["x.py", "x/__init__.py"]
    assert language_of("web/App.tsx") == "tsx" and language_of("cmd/main.go") == "go"
    assert language_of(".env.production") == "dotenv" and language_of("README") == ""


def test_go_package_files_come_in(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "go.mod": "module example.com/app\n\ngo 1.22\n",
            "cmd/main.go": 'package main\n\nimport "example.com/app/store"\n\nfunc main() {}\n',
            "store/store.go": "package store\n",
            "store/store_test.go": "package store\n",
        },
    )
    ctx = build_context(tmp_path, "cmd/main.go", budget=10_000)
    assert [s.path for s in ctx.related] == ["store/store.go"]


def test_secrets_are_masked_everywhere_and_secret_files_skipped(tmp_path: Path) -> None:
    root = secret_workspace(tmp_path)
    ctx = build_context(root, "svc/client.py", start_line=4, end_line=9, budget=20_000)
    text = everything(ctx)
    for name, value in SECRETS.items():
        assert value not in text, name
    paths = [s.path for s in ctx.related]
    assert "svc/config.py" in paths and "svc/deploy.yaml" in paths and "svc/notes.txt" in paths
    assert "svc/.env" not in paths and "svc/key.pem" not in paths
    assert "MASKED_SECRET_" in ctx.selection.text and ctx.masker.count >= 8
    assert "def connect(password: str) -> None:" in ctx.selection.text  # code is kept, only values go
    assert ctx.masker.restore(ctx.selection.text) == "".join(
        root.joinpath("svc/client.py").read_text().splitlines(keepends=True)[3:9]
    )


def test_masker_keeps_ordinary_code() -> None:
    masker = SecretMasker()
    code = (
        "max_tokens = 100\npassword = os.environ['PASSWORD']\ntoken = get_token()\n"
        "cache_key = 'user:1'\nsecret_name = 'prod/db'\nprint('Basic authentication')\n"
        "def login(password: str): ...\n"
    )
    assert masker.mask(code, "python") == code and masker.count == 0


def test_target_errors(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": "x = 1\ny = 2\n"})
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02")
    with pytest.raises(NotFound):
        build_context(tmp_path, "missing.py")
    with pytest.raises(UnsupportedMediaType):
        build_context(tmp_path, "bin.dat")
    for start, end in ((0, 1), (3, 3), (2, 1)):
        with pytest.raises(Unprocessable):
            build_context(tmp_path, "a.py", start_line=start, end_line=end)
    assert build_context(tmp_path, "a.py", start_line=2, end_line=99).end_line == 2
    (tmp_path / "outside.py").write_text("z = 3\n")
    (tmp_path / "link.py").symlink_to("/etc/passwd")
    ctx = build_context(tmp_path, "a.py")
    assert "link.py" not in [s.path for s in ctx.related]


def test_excerpts_that_start_inside_a_private_key_are_masked(tmp_path: Path) -> None:
    body = [f"KEYMATERIAL{i:02d}abcdefghijklmnop" for i in range(12)]
    text = (
        "x = 1\n-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(body)
        + "\n-----END OPENSSH PRIVATE KEY-----\ny = 2\n"
    )
    write(tmp_path, {"deploy/notes.md": text})
    for start, end in ((6, 8), (14, 15), (1, 1)):
        ctx = build_context(tmp_path, "deploy/notes.md", start_line=start, end_line=end, budget=5000)
        assert "KEYMATERIAL" not in everything(ctx), (start, end)
    assert "y = 2" in build_context(tmp_path, "deploy/notes.md", start_line=16, end_line=16).selection.text


def test_big_related_files_are_skipped_not_read_whole(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"a/main.py": "import a.big\nimport a.small\n", "a/big.py": "x = 1\n" * 100_000, "a/small.py": "y = 2\n"},
    )
    ctx = build_context(tmp_path, "a/main.py", budget=5000)
    assert [s.path for s in ctx.related] == ["a/small.py"]
