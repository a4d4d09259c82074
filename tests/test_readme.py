"""The README documents every setting and the two commands CI and newcomers run."""

from __future__ import annotations

from pathlib import Path

from app.settings import setting_docs

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [d.env for d in setting_docs() if f"`{d.env}`" not in README]
    assert not missing, f"add to README (uv run python scripts/settings_table.py): {missing}"


def test_the_two_commands_are_given() -> None:
    assert "uv run just dev" in README and "uv run just test" in README
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "just test" in ci
