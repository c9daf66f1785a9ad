"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orrad.runtime.providers import make_http_client
from orrad.runtime.providers.http import HTTPClient


@pytest.fixture
async def client() -> AsyncIterator[HTTPClient]:
    """The daemon's shared provider client, as ``make_http_client`` builds it."""
    async with make_http_client(8) as c:
        yield c
