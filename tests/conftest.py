"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.daemon_process import RUNNING


@pytest.fixture(autouse=True)
def no_leftover_daemons() -> Iterator[None]:
    """A test that fails before stopping its ``orrad run`` must not leave it running."""
    yield
    for process in list(RUNNING):
        process.kill()
