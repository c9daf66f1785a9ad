"""The providers' shared HTTP clients: bounded concurrency, warm connections reused, stale
ones dropped, failures translated at the boundary."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trio.testing

from orrad.errors import ProviderError, ProviderUnavailable
from orrad.http import client as client_module
from orrad.runtime.providers import pool
from orrad.runtime.providers.http import (
    HTTPClient,
    make_http_client,
    make_httpx_client,
    post,
)


class CountingServer:
    """An HTTP/1.1 server that counts connections and the requests it holds at once.

    ``close_after_each`` closes every connection after its answer (without saying so);
    ``chunked`` answers with chunked transfer coding; ``body`` is the answer.
    """

    def __init__(self, *, close_after_each: bool = False, chunked: bool = False,
                 body: bytes = b"ok") -> None:
        self.connections = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0
        self.release = trio.Event()
        self.close_after_each = close_after_each
        self.chunked = chunked
        self.body = body
        self.targets: list[str] = []

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                self.targets.append(event.target.decode())
            if isinstance(event, h11.EndOfMessage):
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                await self.release.wait()
                self.in_flight -= 1
                self.answered += 1
                headers = ([("transfer-encoding", "chunked")] if self.chunked
                           else [("content-length", str(len(self.body)))])
                out = conn.send(h11.Response(status_code=200, headers=headers)) or b""
                for piece in ([self.body[:3], self.body[3:]] if self.chunked else [self.body]):
                    if piece:
                        out += conn.send(h11.Data(data=piece)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if self.close_after_each:
                    await stream.aclose()
                    return
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


Factory = Callable[[int], HTTPClient]


async def _serve(nursery: trio.Nursery, server: CountingServer) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def _one(client: HTTPClient, url: str) -> Callable[[], Awaitable[bytes]]:
    async def one() -> bytes:
        response = await post(client, url, headers={"content-type": "application/json"},
                              body=b"{}", timeout_s=5)
        assert response.status == 200
        return response.body
    return one


@pytest.mark.parametrize("factory", [make_http_client, make_httpx_client])
async def test_requests_beyond_the_limit_wait_and_connections_are_reused(
        factory: Factory) -> None:
    server = CountingServer()
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server)
        async with factory(3) as client:
            one = _one(client, f"http://127.0.0.1:{port}/x?y=1")
            async with trio.open_nursery() as calls:
                for _ in range(8):
                    calls.start_soon(one)
                await trio.testing.wait_all_tasks_blocked()
                assert server.in_flight == 3  # the other five wait for a free slot
                server.release.set()
            assert server.most_in_flight == 3
            assert server.answered == 8
            assert server.connections == 3  # every later request rode a kept-alive connection
            for _ in range(4):  # one at a time: always a warm connection
                assert await one() == b"ok"
            assert server.connections == 3
            assert set(server.targets) == {"/x?y=1"}
        nursery.cancel_scope.cancel()


async def test_a_connection_the_server_closed_is_not_reused() -> None:
    server = CountingServer(close_after_each=True, chunked=True, body=b"chunked answer")
    server.release.set()
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server)
        async with make_http_client(2) as client:
            one = _one(client, f"http://127.0.0.1:{port}/")
            for _ in range(5):
                await trio.testing.wait_all_tasks_blocked()  # the close reaches us
                assert await one() == b"chunked answer"
        assert server.connections == 5 and server.answered == 5
        nursery.cancel_scope.cancel()


async def test_idle_connections_expire(autojump_clock: trio.testing.MockClock) -> None:
    server = CountingServer()
    server.release.set()
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, server)
        async with make_http_client(2) as client:
            one = _one(client, f"http://127.0.0.1:{port}/")
            await one()
            await one()
            assert server.connections == 1
            await trio.sleep(pool.KEEPALIVE_EXPIRY_S + 1)
            await one()
            assert server.connections == 2
        nursery.cancel_scope.cancel()


async def test_failures_are_provider_errors(autojump_clock: trio.testing.MockClock,
                                            monkeypatch: Any) -> None:
    slow = CountingServer()  # never answers: release is not set
    big = CountingServer(body=b"x" * 2000)
    big.release.set()
    monkeypatch.setattr(client_module, "MAX_BODY_BYTES", 1000)
    async with trio.open_nursery() as nursery:
        slow_port = await _serve(nursery, slow)
        big_port = await _serve(nursery, big)
        with trio.socket.socket() as unused:
            await unused.bind(("127.0.0.1", 0))
            closed_port = unused.getsockname()[1]
        async with make_http_client(2) as client:
            with pytest.raises(ProviderUnavailable, match="timed out after 5s"):
                await _one(client, f"http://127.0.0.1:{slow_port}/")()
            with pytest.raises(ProviderUnavailable, match="cannot connect"):
                await _one(client, f"http://127.0.0.1:{closed_port}/")()
            with pytest.raises(ProviderUnavailable, match="larger than 1000 bytes"):
                await _one(client, f"http://127.0.0.1:{big_port}/")()
            with pytest.raises(ProviderError, match="unsupported URL") as info:
                await _one(client, "ftp://127.0.0.1/")()
            assert not info.value.retryable
            with pytest.raises(ProviderError, match="invalid URL"):
                await _one(client, "http://127.0.0.1:99999999/")()
        nursery.cancel_scope.cancel()


async def _raw_server(nursery: trio.Nursery, answers: list[bytes],
                      requests: list[bytes]) -> int:
    """Answer each connection's first request with the next of ``answers`` (raw bytes),
    then close; what was received is kept in ``requests``."""

    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(rest) < length:  # all of it: closing with unread bytes would reset
            rest += await stream.receive_some(65536)
        requests.append(data)
        await stream.send_all(answers.pop(0))
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def test_interim_answers_bodies_until_close_and_header_checks() -> None:
    requests: list[bytes] = []
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
        b"x-a: 1\r\nX-A: 2\r\nconnection: close\r\n\r\nok",  # said, so not pooled
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"until\": \"close\"}",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\ncut",
    ]
    async with trio.open_nursery() as nursery:
        port = await _raw_server(nursery, answers, requests)
        url = f"http://127.0.0.1:{port}/v1/x?y=1"
        async with make_http_client(2) as client:
            first = await client.post(url, headers={"Authorization": "Bearer k"}, body=b"{}",
                                      timeout_s=5)
            assert (first.status, first.body, first.headers["x-a"]) == (200, b"ok", "1, 2")
            head = requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
            assert head[0] == b"POST /v1/x?y=1 HTTP/1.1"
            assert f"host: 127.0.0.1:{port}".encode() in head
            assert b"content-length: 2" in head and b"Authorization: Bearer k" in head
            second = await client.post(url, headers={}, body=b"", timeout_s=5)
            assert second.body == b'{"until": "close"}'
            with pytest.raises(ProviderUnavailable, match="closed the connection"):
                await client.post(url, headers={}, body=b"", timeout_s=5)
            with pytest.raises(ProviderError, match="cannot be sent") as refused:
                await client.post(url, headers={"x-key": "k\r\nx-injected: 1"}, body=b"",
                                  timeout_s=5)
            assert "x-injected" not in str(refused.value)  # a value (a key?) is never shown
            assert len(requests) == 3  # the refused one never left
        nursery.cancel_scope.cancel()


async def test_large_bodies_both_ways_arrive_whole() -> None:
    """A request larger than the socket's send buffer is written partly at once and the
    rest as the socket takes it; an answer larger than one read comes in many."""
    request_body = bytes(range(256)) * (32 * 1024)  # 8 MiB
    answer_body = b"a" * (2 * 1024 * 1024 + 17)
    received: list[bytes] = []

    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        received.append(bytes(body))
        out = conn.send(h11.Response(status_code=200, headers=[
            ("content-length", str(len(answer_body)))])) or b""
        out += (conn.send(h11.Data(data=answer_body)) or b"") + (
            conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with make_http_client(4) as client:
            response = await post(client, f"http://127.0.0.1:{port}/big", headers={},
                                  body=request_body, timeout_s=30)
        nursery.cancel_scope.cancel()
    assert response.status == 200 and response.body == answer_body
    assert received == [request_body]
