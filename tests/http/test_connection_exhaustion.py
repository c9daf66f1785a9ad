"""Connection exhaustion (issue 10 item 7): slowloris heads and hoarded keep-alives cannot
keep a normal request from being answered, from another address or from the same one;
connections in use (waiting less than ``evict_after_s``) are never taken from a client.

Real sockets on loopback; clients pick their source address in 127.0.0.0/8 to play
different hosts. Trio's clock is a frozen MockClock, jumped by hand: how long a connection
has waited is then exact, and no timeout fires by itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from orrad.http import HTTPServer, Request, Response, Router, json_response
from orrad.http.limits import ServerLimits

Addr = tuple[str, int]
SLOW_HEAD = b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


async def ok(request: Request) -> Response:
    return json_response(200, {"client": request.client})


@pytest.fixture
async def attackers() -> AsyncIterator[list[trio.SocketStream]]:
    streams: list[trio.SocketStream] = []
    yield streams
    for stream in streams:
        await trio.aclose_forcefully(stream)


async def serve(nursery: trio.Nursery, limits: ServerLimits) -> tuple[HTTPServer, Addr]:
    router = Router()
    router.add("POST", "/hook", ok)
    server = HTTPServer(router, limits=limits)
    addr: Addr = await nursery.start(server.serve, "127.0.0.1:0")
    return server, addr


async def settle(condition: Callable[[], bool]) -> None:
    """Let the server accept what the kernel has queued until ``condition`` holds (the
    clock is frozen, so this is bounded by a count of scheduling rounds, not by time)."""
    for _ in range(100_000):
        if condition():
            return
        await trio.testing.wait_all_tasks_blocked()
    raise AssertionError("the server never got there")


def tick() -> None:
    """Let a little time pass between two attacking connections, so that their ages (and
    so which one is the longest-waiting) are well defined under the frozen clock."""
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock)
    clock.jump(0.0001)


async def slowloris(addr: Addr, source: str, count: int,
                    streams: list[trio.SocketStream]) -> None:
    """``count`` connections from ``source`` that send part of a head and then nothing."""
    for _ in range(count):
        stream = await trio.open_tcp_stream(*addr, local_address=source)
        await stream.send_all(SLOW_HEAD)
        streams.append(stream)
        await trio.testing.wait_all_tasks_blocked()  # accepted before the clock moves on
        tick()


async def keep_alive_hoard(addr: Addr, source: str, count: int,
                           streams: list[trio.SocketStream]) -> None:
    """``count`` connections from ``source`` that make one request and then sit idle."""
    for _ in range(count):
        stream = await trio.open_tcp_stream(*addr, local_address=source)
        await stream.send_all(b"POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        received = b""
        while b'"}' not in received:
            chunk = await stream.receive_some(4096)
            assert chunk, "closed before answering"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        streams.append(stream)
        tick()


async def post_from(addr: Addr, source: str) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        return await client.post(f"http://{addr[0]}:{addr[1]}/hook", json={})


async def closed_by_server(stream: trio.SocketStream) -> bool:
    return await stream.receive_some(4096) == b""  # bounded: the server closes it or fails


def from_host(server: HTTPServer, host: str) -> int:
    return sum(1 for conn in server._shared.connections if conn.host == host)


Attack = Callable[[Addr, str, int, list[trio.SocketStream]], Awaitable[None]]


@pytest.mark.parametrize("attack", [slowloris, keep_alive_hoard])
async def test_one_address_cannot_take_every_slot(
        nursery: trio.Nursery, attackers: list[trio.SocketStream], attack: Attack,
        mock_clock: trio.testing.MockClock) -> None:
    limits = ServerLimits()  # the defaults every orrad listener uses
    server, addr = await serve(nursery, limits)
    per_client = limits.max_connections_per_client
    await attack(addr, "127.0.0.1", per_client, attackers)
    await settle(lambda: server.active_connections == per_client)

    other = await post_from(addr, "127.0.0.2")
    assert other.status_code == 200 and other.json()["client"].startswith("127.0.0.2:")
    # From the attacking address itself: refused while its connections are fresh (one
    # of them may be a client's keep-alive about to carry its next request)...
    assert (await post_from(addr, "127.0.0.1")).status_code == 503
    mock_clock.jump(limits.evict_after_s)
    same = await post_from(addr, "127.0.0.1")  # ...served once they have waited
    assert same.status_code == 200
    assert from_host(server, "127.0.0.1") <= per_client
    # The attack's first connection was the one closed to make room.
    assert await closed_by_server(attackers[0])


async def test_many_addresses_cannot_take_every_slot_either(
        nursery: trio.Nursery, attackers: list[trio.SocketStream],
        mock_clock: trio.testing.MockClock) -> None:
    limits = ServerLimits(max_connections=100, max_connections_per_client=40)
    server, addr = await serve(nursery, limits)
    await keep_alive_hoard(addr, "127.0.0.3", 40, attackers)
    await slowloris(addr, "127.0.0.4", 40, attackers)
    await slowloris(addr, "127.0.0.5", 20, attackers)
    await settle(lambda: server.active_connections == 100)

    assert (await post_from(addr, "127.0.0.2")).status_code == 503  # every one is fresh
    mock_clock.jump(limits.evict_after_s)
    response = await post_from(addr, "127.0.0.2")
    assert response.status_code == 200
    assert server.active_connections <= 100
    assert await closed_by_server(attackers[0])  # the longest-waiting keep-alive went first
