"""Fixtures shared by the provider tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from orrad.runtime.providers import make_http_client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The daemon's shared provider client, as ``make_http_client`` builds it."""
    async with make_http_client(8) as c:
        yield c
