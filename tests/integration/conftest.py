"""Fixtures of the integration tests that start whole embedded stacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qserver.localstack import DATA_DIR_ENV
from tests.integration.test_stack import Stacks


@pytest.fixture
def stacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stacks]:
    """Embedded stacks on one data dir, killed at the end of the test."""
    s = Stacks(tmp_path)
    # As a user points clients at a stack: they read its address and NATS key from there.
    monkeypatch.setenv(DATA_DIR_ENV, str(s.data_dir))
    yield s
    s.cleanup()
