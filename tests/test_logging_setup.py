"""Logging set up more than once in a process (tests, CLI commands): the last level wins for every logger."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from app.logging_setup import configure_logging
from tests.conftest import make_settings


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
