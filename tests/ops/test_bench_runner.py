"""bench/run_all.py: discovery, the BENCH_RESULT protocol, timeouts and the combined table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("run_all_under_test", ROOT / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    monkeypatch.setattr(module, "BENCH_DIR", tmp_path)
    return module


def write(path: Path, body: str) -> None:
    path.write_text("import json, sys, time\n" + body)


def test_discovery_protocol_timeout_and_table(run_all, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = [
        {"name": "p99", "value": 12.5, "unit": "ms", "target": "< 20 ms", "ok": True},
        {"name": "ceiling", "value": 13000, "unit": "req/s", "reference": True},
    ]
    write(
        tmp_path / "api.py",
        f"print('working')\nprint('BENCH_RESULT ' + json.dumps({{'bench': 'api', 'rows': {rows!r}}}))\n",
    )
    write(tmp_path / "patches.py", "print('name  value')\nprint('x  1 ms')\nsys.exit(3)\n")
    write(tmp_path / "custom.py", "time.sleep(30)\nprint('BENCH_RESULT {}')\n")
    write(tmp_path / "_helper.py", "print('BENCH_RESULT {}')\n")
    write(tmp_path / "upstream.py", "print('not a bench')\n")
    assert run_all.discover() == ["api", "patches", "custom"]
    results = [run_all.run_one(name, 5, []) for name in ("api", "patches", "custom")]
    assert results[0]["status"] == "ok" and results[0]["rows"] == rows
    assert results[1]["status"] == "exit 3" and results[1]["tail"][-1] == "x  1 ms"
    assert results[2]["status"].startswith("timeout") and results[2]["seconds"] < 20
    text = run_all.table(results)
    assert "12.50" in text and "13,000" in text and "ref" in text and "ok" in text
    assert "no BENCH_RESULT line: exit 3" in text


def test_parse_result_takes_the_last_valid_line(run_all) -> None:  # type: ignore[no-untyped-def]
    out = 'BENCH_RESULT {"rows": [{"name": "a"}]}\nBENCH_RESULT {broken\nBENCH_RESULT {"rows": [{"name": "b"}]}\n'
    assert run_all.parse_result(out)["rows"] == [{"name": "b"}]
    assert run_all.parse_result("nothing here") is None


def test_real_bench_dir_discovers_api(run_all, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(run_all, "BENCH_DIR", ROOT / "bench")
    names = run_all.discover()
    assert names[0] == "api" and "run_all" not in names and "_api_app" not in names and "upstream" not in names
