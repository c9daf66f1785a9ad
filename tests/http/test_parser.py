"""What the llhttp-based request parser and the server's own response writer guarantee
beyond llhttp itself: Host rules, header normalisation, pipelining order, protocol switches
refused by closing, and responses a strict client parser (h11) accepts."""

from __future__ import annotations

import json

import httptools
import httpx
import trio

from orrad.http import Request, Response, Router, json_response
from orrad.http.parser import END, NEED_DATA, PAUSED, Body, Head, ProtocolError, RequestParser
from tests.http.test_server import (
    error_code,
    parse_raw,
    read_to_eof,
    request_bytes,
    start,
    url,
)


async def headers_seen(request: Request) -> Response:
    return json_response(200, {"headers": request.headers, "target": request.target})


def router() -> Router:
    r = Router()
    r.add("GET", "/h", headers_seen)
    r.add("POST", "/h", headers_seen)
    return r


async def exchange(addr: tuple[str, int], raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(raw)
    return await read_to_eof(stream)


def test_events_come_one_request_at_a_time() -> None:
    parser = RequestParser(16384)
    parser.receive_data(b"POST /a HTTP/1.1\r\nHost: x\r\nX-Odd:  v  \r\nContent-Length: 2\r\n\r\nab"
                        b"GET /b HTTP/1.1\r\nhost: y\r\n\r\n")
    head = parser.next_event()
    assert isinstance(head, Head) and (head.method, head.target) == (b"POST", b"/a")
    assert head.headers == [(b"host", b"x"), (b"x-odd", b"v"), (b"content-length", b"2")]
    body = parser.next_event()
    assert isinstance(body, Body) and body.data == b"ab"
    assert parser.next_event() is END
    assert parser.next_event() is PAUSED  # until the first one is answered
    parser.start_next_cycle()
    second = parser.next_event()
    assert isinstance(second, Head) and second.target == b"/b"
    assert parser.next_event() is END
    parser.start_next_cycle()
    assert parser.next_event() is NEED_DATA


def test_a_head_in_pieces_is_bounded() -> None:
    parser = RequestParser(100)
    parser.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"x-filler: " + b"a" * 100)
    try:
        parser.next_event()
    except ProtocolError as exc:
        assert exc.status == 431
    else:
        raise AssertionError("no error for an oversized head")


async def test_http11_needs_exactly_one_host(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, router())
    for raw in (b"GET /h HTTP/1.1\r\n\r\n",
                b"GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
        response, body = parse_raw(await exchange(addr, raw))
        assert response.status_code == 400 and error_code(body) == "bad_request"
    response, _ = parse_raw(await exchange(addr, b"GET /h HTTP/1.0\r\n\r\n"))
    assert response.status_code == 200  # HTTP/1.0 has no Host requirement, and closes


async def test_folded_and_malformed_headers_are_400(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, router())
    for raw in (b"GET /h HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
                b"GET /h HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n",
                b"GET /h HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"POST /h HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
                b"GET /h\x01 HTTP/1.1\r\nHost: a\r\n\r\n"):
        response, _ = parse_raw(await exchange(addr, raw))
        assert response.status_code == 400, raw


async def test_fifty_pipelined_requests_are_answered_in_order(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, router())
    stream = await trio.open_tcp_stream(*addr)
    data = b"".join(request_bytes("POST", f"/h?i={i}", body=b"{}")[1] for i in range(50))
    await stream.send_all(data)  # all at once: one read holds many requests

    class Collect:
        def __init__(self) -> None:
            self.bodies: list[bytes] = []
            self.current = b""

        def on_body(self, chunk: bytes) -> None:
            self.current += chunk

        def on_message_complete(self) -> None:
            self.bodies.append(self.current)
            self.current = b""

    collect = Collect()
    responses = httptools.HttpResponseParser(collect)
    with trio.fail_after(10):
        while len(collect.bodies) < 50:
            responses.feed_data(await stream.receive_some(65536))
    targets = [json.loads(body)["target"] for body in collect.bodies]
    assert targets == [f"/h?i={i}" for i in range(50)]
    await stream.aclose()


async def test_a_protocol_switch_is_answered_then_closed(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, router())
    raw = (b"GET /h HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           b"\x81\x05hello")  # bytes of the other protocol are never parsed as HTTP
    reply = await exchange(addr, raw)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1") == 1
    assert b"\r\nconnection: close\r\n" in reply


async def test_headers_reach_the_handler_normalised(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, router())
    raw = (b"GET /h HTTP/1.1\r\nHost: a\r\nX-Mixed-Case:\t spaced out \t\r\n"
           b"Connection: close\r\n\r\n")
    response, body = parse_raw(await exchange(addr, raw))
    assert response.status_code == 200
    assert (b"connection", b"close") in response.headers  # the client asked: we close
    assert ["x-mixed-case", "spaced out"] in httpx.Response(200, content=body).json()["headers"]


async def test_responses_a_handler_cannot_frame_are_500(nursery: trio.Nursery) -> None:
    async def bad(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind == "length":
            return Response(200, [("Content-Length", "1")], b"ab")
        if kind == "status":
            return Response(1000, [], b"")
        if kind == "unicode":
            return Response(200, [("x-name", "caf\u00e9")], b"")
        return Response(299, [("x-fine", "yes")], b"ok")

    r = Router()
    r.add("GET", "/bad/{kind}", bad)
    _, addr = await start(nursery, r)
    async with httpx.AsyncClient() as client:
        for kind in ("length", "status", "unicode"):
            response = await client.get(url(addr, f"/bad/{kind}"))
            assert response.status_code == 500, kind
        fine = await client.get(url(addr, "/bad/other"))
        assert (fine.status_code, fine.headers["x-fine"], fine.text) == (299, "yes", "ok")
