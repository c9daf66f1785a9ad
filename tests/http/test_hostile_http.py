"""Hostile HTTP against orrad's server (issue 10 items 5, 6, 8), over raw sockets."""

from __future__ import annotations

import trio

from tests.http.test_server import start

BODY = b'{"a":1}'


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw``, then read until the server closes (or 5 s pass)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    with trio.move_on_after(5):
        await stream.send_all(raw)
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


def _status_lines(received: bytes) -> list[bytes]:
    return [line for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


async def test_content_length_with_transfer_encoding_is_refused_and_closed() -> None:
    follow = b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
    chunked = b"7\r\n" + BODY + b"\r\n0\r\n\r\n"
    async with trio.open_nursery() as nursery:
        _, (_, port) = await start(nursery)
        for first, second in ((b"content-length: 7", b"transfer-encoding: chunked"),
                              (b"transfer-encoding: chunked", b"content-length: 7")):
            raw = (b"POST /echo HTTP/1.1\r\nhost: t\r\n" + first + b"\r\n" + second
                   + b"\r\n\r\n" + chunked + follow)
            received = await _exchange(port, raw)
            lines = _status_lines(received)
            assert lines[:1] == [b"HTTP/1.1 400 Bad Request"], received
            assert len(lines) == 1  # the request behind it is never served
            assert b"connection: close" in received.lower()
        nursery.cancel_scope.cancel()


async def test_the_header_limit_holds_however_the_head_arrives() -> None:
    async with trio.open_nursery() as nursery:
        _, (_, port) = await start(nursery)
        big = b"x-big: " + b"a" * 40_000 + b"\r\n"
        signatures = b"webhook-signature: " + b" ".join(
            b"v1,%044d" % i for i in range(1_000)) + b"\r\n"
        for header in (big, signatures):
            raw = b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 7\r\n" + header \
                + b"\r\n" + BODY
            lines = _status_lines(await _exchange(port, raw))  # one send: one read, usually
            assert lines == [b"HTTP/1.1 431 Request Header Fields Too Large"]
        ok = await _exchange(port, b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 7\r\n"
                                   b"connection: close\r\n\r\n" + BODY)
        assert _status_lines(ok) == [b"HTTP/1.1 200 OK"]
        nursery.cancel_scope.cancel()


async def test_absolute_form_targets_are_served() -> None:
    async with trio.open_nursery() as nursery:
        _, (_, port) = await start(nursery)
        received = await _exchange(
            port, b"POST http://127.0.0.1:%d/echo?x=1 HTTP/1.1\r\nhost: t\r\n"
                  b"content-length: 7\r\nconnection: close\r\n\r\n" % port + BODY)
        assert _status_lines(received) == [b"HTTP/1.1 200 OK"]
        assert b'"path":"/echo"' in received and b'"query":{"x":["1"]}' in received
        bare = await _exchange(port, b"GET http://t HTTP/1.1\r\nhost: t\r\nconnection: close"
                                     b"\r\n\r\n")
        assert _status_lines(bare) == [b"HTTP/1.1 404 Not Found"]  # path "/": no such route
        nursery.cancel_scope.cancel()
