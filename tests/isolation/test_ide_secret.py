"""The IDE secret's parts on their own: derivation, the server key, the relay's cookie and the IDE's argv."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.services.runtime.ide_secret import (
    IdeSecret,
    IdeSecrets,
    ide_cookie_header,
    local_launch,
    password_auth_overrides,
    require_password_auth,
    server_key,
)
from app.settings import SettingsError
from tests.support.settings import make_settings

CODE_SERVER_ENTRYPOINT = ["/usr/bin/dumb-init", "--", "/usr/bin/code-server", "--bind-addr", "0.0.0.0:8080"]


def test_each_start_has_its_own_secret() -> None:
    secrets = IdeSecrets(b"k" * 32)
    first, again = secrets.for_start("w1", 1), secrets.for_start("w1", 1)
    assert first == again and len(first.reveal()) == 64
    assert first != secrets.for_start("w1", 2) and first != secrets.for_start("w2", 1)
    assert first != IdeSecrets(b"x" * 32).for_start("w1", 1)
    assert secrets.cookie("w1", 1) == b"code-server-session=" + first.reveal().encode()
    assert secrets.cookie("w1", 0) is None  # generation 0: no start made it


def test_the_secret_never_shows_in_text() -> None:
    secret = IdeSecrets(b"k" * 32).for_start("w1", 3)
    for text in (repr(secret), str(secret), f"{secret}", f"{[secret]}"):
        assert secret.reveal() not in text
    assert secret.ide_env(generic=False) == {"HASHED_PASSWORD": secret.reveal()}
    assert secret.ide_env(generic=True)["CODEHUB_IDE_SECRET"] == secret.reveal()


def test_server_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    key = server_key(settings)
    path = tmp_path / "data" / "secret_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes().strip() == key and len(key) >= 32
    assert server_key(make_settings(tmp_path / "data")) == key  # what another process, or a restarted hub, reads
    assert server_key(make_settings(tmp_path / "other")) != key
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["secret_key"]


def test_configured_key_wins_and_is_checked(tmp_path: Path) -> None:
    configured = "s" * 40
    assert server_key(make_settings(tmp_path, secret_key=configured)) == configured.encode()
    assert not (tmp_path / "secret_key").exists()
    with pytest.raises(SettingsError, match="CODEHUB_SECRET_KEY"):
        make_settings(tmp_path, secret_key="short")


def test_relay_cookie_cannot_be_overridden_by_the_browser() -> None:
    mine = b"code-server-session=good"
    browser = [b"code-server-session=forged; theme=dark", b" code-server-session =forged2;x=1"]
    assert ide_cookie_header(browser, mine) == b"code-server-session=good; theme=dark; x=1"
    assert ide_cookie_header([b"code-server-session=forged"], mine) == mine
    assert ide_cookie_header([], mine) == mine
    # no start to present for: the browser's cookies pass, minus any IDE session of its own
    assert ide_cookie_header([b"theme=dark"], None) == b"theme=dark"
    assert ide_cookie_header([b"code-server-session=forged"], None) is None
    assert ide_cookie_header([], None) is None


def test_auth_none_becomes_password() -> None:
    assert require_password_auth(["code-server", "--auth", "none", "."]) == ["code-server", "--auth", "password", "."]
    assert require_password_auth(["code-server", "--auth=none"]) == ["code-server", "--auth=password"]
    assert require_password_auth(["wsecho"]) == ["wsecho"]
    overrides = password_auth_overrides([*CODE_SERVER_ENTRYPOINT, "--auth", "none"], ["/home/coder/project"])
    assert overrides == {
        "Entrypoint": [*CODE_SERVER_ENTRYPOINT, "--auth", "password"],
        "Cmd": ["/home/coder/project"],  # Docker drops the image's CMD once the entrypoint is replaced
    }
    assert password_auth_overrides(["ide", "--auth"], ["none", "/p"]) == {
        "Entrypoint": ["ide", "--auth"],
        "Cmd": ["password", "/p"],
    }
    assert password_auth_overrides(["/usr/bin/entrypoint.sh", "--bind-addr", "0.0.0.0:8080", "."], []) == {}


def test_local_launch_passes_the_secret_in_the_environment_only() -> None:
    secret = IdeSecret("f" * 64)
    argv, env = local_launch(["code-server", "--auth", "none", "--bind-addr", "127.0.0.1:1"], secret)
    assert argv == ["code-server", "--auth", "password", "--bind-addr", "127.0.0.1:1"]
    assert env == {"HASHED_PASSWORD": "f" * 64, "CODEHUB_IDE_SECRET": "f" * 64}
    assert local_launch(["ide", "--auth", "none"], None) == (["ide", "--auth", "none"], {})
