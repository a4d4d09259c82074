"""Settings are typed, validated and documented."""

from __future__ import annotations

import pytest

from app.settings import SettingsError, load_settings, setting_docs


def test_defaults_use_embedded_services(tmp_path) -> None:
    settings = load_settings(environ={"CODEHUB_DATA_DIR": str(tmp_path)})
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.redis_url == ""
    assert settings.port == 8000


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CODEHUB_PORT": "eighty"}, "CODEHUB_PORT"),
        ({"CODEHUB_PORT": "70000"}, "CODEHUB_PORT"),
        ({"CODEHUB_DATABASE_URL": "mysql://x"}, "CODEHUB_DATABASE_URL"),
        ({"CODEHUB_DATABASE_URL": "postgresql://x/y"}, r"postgresql\+psycopg"),
        ({"CODEHUB_REDIS_URL": "http://x"}, "CODEHUB_REDIS_URL"),
        ({"CODEHUB_IDLE_TIMEOUT": "-5"}, "CODEHUB_IDLE_TIMEOUT"),
        ({"CODEHUB_ALLOWED_ORIGINS": "not an origin"}, "CODEHUB_ALLOWED_ORIGINS"),
        ({"CODEHUB_RUNTIME": "kubernetes"}, "CODEHUB_RUNTIME"),
        ({"CODEHUB_COOKIE_SECURE": "maybe"}, "CODEHUB_COOKIE_SECURE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(environ=env)


def test_lists_and_bools_parse() -> None:
    settings = load_settings(
        environ={
            "CODEHUB_ALLOWED_ORIGINS": "https://a.example, http://b:8080",
            "CODEHUB_COOKIE_SECURE": "yes",
        }
    )
    assert settings.allowed_origins == ("https://a.example", "http://b:8080")
    assert settings.cookie_secure is True


def test_every_setting_is_documented() -> None:
    docs = setting_docs()
    assert {d.env for d in docs} >= {
        "CODEHUB_DATA_DIR",
        "CODEHUB_DATABASE_URL",
        "CODEHUB_REDIS_URL",
        "CODEHUB_DOCKER_URL",
        "CODEHUB_DEFAULT_IMAGE",
        "CODEHUB_LLM_BASE_URL",
        "CODEHUB_LLM_MODEL",
        "CODEHUB_LLM_API_KEY",
        "CODEHUB_IDLE_TIMEOUT",
        "CODEHUB_ALLOWED_ORIGINS",
    }
    assert all(d.help for d in docs), [d.env for d in docs if not d.help]
