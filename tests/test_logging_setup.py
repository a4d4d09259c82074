"""Logging set up more than once in a process (tests, CLI commands): the last level wins for every logger."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from app.logging_setup import configure_logging
from tests.support.settings import make_settings


def test_a_logger_used_before_a_reconfiguration_follows_the_new_level(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = structlog.get_logger("codehub.test-reconfigure")
    try:
        configure_logging(make_settings(tmp_path, log_level="warning"))
        log.info("quiet-at-warning")  # the logger is cached here, at first use
        configure_logging(make_settings(tmp_path, log_level="debug"))
        log.info("heard-at-debug")
        log.debug("debug-too")
        configure_logging(make_settings(tmp_path, log_level="error"))
        log.warning("quiet-again")
        log.error("errors-always")
        err = capfd.readouterr().err
    finally:
        configure_logging(make_settings(tmp_path, log_level="warning"))
    assert "quiet-at-warning" not in err and "quiet-again" not in err
    assert "heard-at-debug" in err and "debug-too" in err and "errors-always" in err


def test_tokens_in_foreign_log_lines_are_redacted(capsys) -> None:
    import logging

    from app.logging_setup import configure_logging
    from app.settings import load_settings

    configure_logging(load_settings(environ={}, log_level="info"))
    token = "chub_" + "A1b2C3d4" * 5
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "127.0.0.1:1", f"/w/x/?access_token={token}&a=1"
    )
    logging.getLogger("uvicorn.error").info("plain %s", token)
    err = capsys.readouterr().err
    assert token not in err
    assert "access_token=[redacted]&a=1" in err and "plain [redacted]" in err
