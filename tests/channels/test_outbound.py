"""The channels' HTTP client is made on first use, once, and never after it was closed."""

from __future__ import annotations

import httpx
import pytest
import trio

from orrad.channels.outbound import OnDemandClient


async def test_the_client_is_made_on_first_use_and_then_reused() -> None:
    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    async with OnDemandClient(factory) as source:
        assert made == [] and not source.built
        first = source.get()
        assert source.get() is first and made == [first] and source.built
    assert first.is_closed and not source.built
    with pytest.raises(trio.ClosedResourceError):
        source.get()
    assert len(made) == 1


async def test_closing_an_unused_source_makes_no_client() -> None:
    made: list[httpx.AsyncClient] = []

    def factory() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient())
        return made[-1]

    source = OnDemandClient(factory)
    await source.aclose()
    with pytest.raises(trio.ClosedResourceError):
        source.get()
    assert made == []
