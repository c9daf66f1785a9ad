"""orrad.http end to end: real sockets on 127.0.0.1, httpx for ordinary calls and raw trio
streams (with a client-side h11 to read answers) for the misbehaving-client cases."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import httpx
import msgspec
import pytest
import trio
import trio.testing

from orrad.errors import OrradError
from orrad.http import (
    HTTPError,
    HTTPServer,
    Request,
    Response,
    Router,
    ServerLimits,
    error_response,
    json_response,
    parse_listen,
)

Addr = tuple[str, int]


# -- helpers ----------------------------------------------------------------------------------


async def echo(req: Request) -> Response:
    return json_response(
        200,
        {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "params": req.path_params,
            "body": req.body.decode(),
            "client": req.client,
        },
    )


def make_router() -> Router:
    router = Router()
    router.add("GET", "/healthz", echo)
    router.add("POST", "/echo", echo)
    router.add("POST", "/small", echo, max_body_bytes=10)
    router.add("GET", "/items/{id}", echo)
    router.add("DELETE", "/items/{id}", echo)
    router.add("GET", "/v1/sessions/{namespace:path}", echo)
    return router


async def start(
    nursery: trio.Nursery,
    handler: Router | Callable[[Request], Awaitable[Response]] | None = None,
    **limits: Any,
) -> tuple[HTTPServer, Addr]:
    """Serve ``handler`` (default: make_router()) on a free port with the given limits."""
    server = HTTPServer(
        handler if handler is not None else make_router(), limits=ServerLimits(**limits)
    )
    addr: Addr = await nursery.start(server.serve, "127.0.0.1:0")
    return server, addr


def url(addr: Addr, path: str) -> str:
    return f"http://{addr[0]}:{addr[1]}{path}"


def request_bytes(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> tuple[h11.Connection, bytes]:
    """A client-side h11 connection that has sent the request, and the bytes to send."""
    client = h11.Connection(h11.CLIENT)
    hdrs = [("host", "test"), *(headers or [])]
    if body and not any(k == "content-length" for k, _ in hdrs):
        hdrs.append(("content-length", str(len(body))))
    data = client.send(h11.Request(method=method, target=target, headers=hdrs))
    if body:
        data += client.send(h11.Data(data=body))
    data += client.send(h11.EndOfMessage()) or b""
    return client, data


async def read_response(
    stream: trio.SocketStream, client: h11.Connection
) -> tuple[h11.Response | h11.InformationalResponse, bytes]:
    """Read one response (or a 1xx) with h11; the body is returned whole."""
    response: h11.Response | None = None
    body = b""
    with trio.fail_after(30):
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.InformationalResponse):
                return event, b""
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body
            else:
                raise AssertionError(f"unexpected {event!r}")


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


def parse_raw(data: bytes, method: str = "GET") -> tuple[h11.Response, bytes]:
    """Parse a complete raw response (for requests h11 itself could not have sent)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    return response, body


def header(response: h11.Response | h11.InformationalResponse, name: str) -> str | None:
    for key, value in response.headers:
        if key == name.encode():
            return value.decode()
    return None


def error_code(body: bytes) -> str:
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    code = decoded["error"]["code"]
    assert isinstance(code, str)
    return code


# -- pure pieces ------------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("localhost:1") == ("localhost", 1)
    assert parse_listen(":80") == ("", 80)  # every interface, as orrad check accepts it
    for bad in ["8470", "::1:80", "[::1:80", "host:", "host:65536", "host:x", "h st:1"]:
        with pytest.raises(ValueError, match=r"HOST:PORT|brackets|IPv6|port|white space"):
            parse_listen(bad)


def test_json_helpers_and_request() -> None:
    resp = json_response(201, {"a": [1, 2]}, [("x-extra", "1")])
    assert resp.status == 201
    assert resp.headers == [("content-type", "application/json"), ("x-extra", "1")]
    assert resp.body == b'{"a":[1,2]}'
    err = error_response(409, "in_progress", "busy")
    assert msgspec.json.decode(err.body) == {"error": {"code": "in_progress", "message": "busy"}}
    assert err.header("Content-Type") == "application/json"

    req = Request("POST", "/a%20b?x=1&x=2&y=", [("x-token", "t")], b'{"k": 1}')
    assert req.path == "/a b"
    assert req.query == {"x": ["1", "2"], "y": [""]}
    assert req.header("X-Token") == "t"
    assert req.header("missing") is None
    assert req.json() == {"k": 1}
    with pytest.raises(HTTPError, match="invalid JSON") as info:
        Request("POST", "/", body=b"{nope").json()
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert isinstance(info.value, OrradError)


def test_router_matching_and_priority() -> None:
    async def a(req: Request) -> Response:
        return Response(200)

    async def b(req: Request) -> Response:
        return Response(200)

    router = Router()
    router.add("GET", "/x/{id}", a)
    router.add("GET", "/x/fixed", b)  # added later: the placeholder route wins
    router.add("GET", "/y/fixed", b)
    router.add("GET", "/y/{id}", a)
    router.add("GET", "/files/{ns:path}", a, max_body_bytes=5)
    assert router.route("GET", "/x/fixed") == (a, {"id": "fixed"}, None)
    assert router.route("GET", "/y/fixed") == (b, {}, None)
    assert router.route("GET", "/files/a/b/c") == (a, {"ns": "a/b/c"}, 5)
    for missing in ["/x/", "/x", "/x/1/2", "/files/", "/nope"]:
        with pytest.raises(HTTPError) as info:
            router.route("GET", missing)
        assert info.value.status == 404
    with pytest.raises(HTTPError) as info:
        router.route("HEAD", "/x/1")
    assert info.value.status == 405
    assert info.value.headers == [("allow", "GET")]
    for bad in ["x", "/a/{}", "/a/{b:int}", "/a/{p:path}/b", "/a/{b}/{b}", "/a/x{b}"]:
        with pytest.raises(ValueError):
            router.add("GET", bad, a)


# -- routing over the wire --------------------------------------------------------------------


async def test_routes_params_and_errors(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    async with httpx.AsyncClient() as client:
        r = await client.get(url(addr, "/healthz"))
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["server"] == "orrad"
        assert r.headers["date"].endswith(" GMT")
        assert r.headers["content-length"] == str(len(r.content))
        assert r.json()["client"].startswith("127.0.0.1:")

        r = await client.get(url(addr, "/items/a%20b?x=1&x=2&e="))
        assert r.json()["params"] == {"id": "a b"}
        assert r.json()["query"] == {"x": ["1", "2"], "e": [""]}

        r = await client.get(url(addr, "/v1/sessions/webhook:a/b/c"))
        assert r.json()["params"] == {"namespace": "webhook:a/b/c"}

        r = await client.get(url(addr, "/nope"))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"

        r = await client.put(url(addr, "/items/1"))
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "method_not_allowed"
        assert r.headers["allow"] == "GET, DELETE"

        r = await client.post(url(addr, "/echo"), content=b"hello")
        assert r.json()["body"] == "hello"


async def test_plain_handler_instead_of_router(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, echo)
    async with httpx.AsyncClient() as client:
        r = await client.patch(url(addr, "/any/where"), content=b"x")
    assert r.json()["method"] == "PATCH"
    assert r.json()["path"] == "/any/where"


async def test_http_error_and_internal_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def teapot(req: Request) -> Response:
        raise HTTPError(418, "teapot", "short and stout", [("x-why", "tea")])

    async def broken(req: Request) -> Response:
        raise KeyError("secret-internal-detail")

    router = Router()
    router.add("GET", "/teapot", teapot)
    router.add("GET", "/broken", broken)
    _, addr = await start(nursery, router)
    async with httpx.AsyncClient() as client:
        r = await client.get(url(addr, "/teapot"))
        assert r.status_code == 418
        assert r.json() == {"error": {"code": "teapot", "message": "short and stout"}}
        assert r.headers["x-why"] == "tea"

        with caplog.at_level(logging.ERROR, logger="orrad.http.server"):
            r = await client.get(url(addr, "/broken"))
        assert r.status_code == 500
        assert r.json() == {"error": {"code": "internal", "message": "internal server error"}}
        assert b"secret-internal-detail" not in r.content
        assert b"Traceback" not in r.content
        # The connection survives a failing handler.
        assert (await client.get(url(addr, "/teapot"))).status_code == 418
    [record] = [r for r in caplog.records if r.name == "orrad.http.server"]
    assert record.exc_info is not None
    assert "/broken" in record.getMessage()


# -- keep-alive and connection handling -------------------------------------------------------


async def test_keepalive_two_requests_one_connection(nursery: trio.Nursery) -> None:
    server, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/healthz")
    await stream.send_all(data)
    response, body = await read_response(stream, client)
    assert response.status_code == 200
    assert header(response, "connection") is None
    client.start_next_cycle()
    data = client.send(h11.Request(method="POST", target="/echo",
                                   headers=[("host", "t"), ("content-length", "2")]))
    data += client.send(h11.Data(data=b"hi")) + (client.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)
    response, body = await read_response(stream, client)
    assert response.status_code == 200
    assert msgspec.json.decode(body)["body"] == "hi"
    assert server.active_connections == 1

    # Connection: close from the client is honoured: answer says so, then the server closes.
    client.start_next_cycle()
    data = client.send(h11.Request(method="GET", target="/healthz",
                                   headers=[("host", "t"), ("connection", "close")]))
    await stream.send_all(data + (client.send(h11.EndOfMessage()) or b""))
    response, _ = await read_response(stream, client)
    assert header(response, "connection") == "close"
    assert await read_to_eof(stream) == b""


async def test_max_requests_per_connection(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, max_requests_per_connection=2)
    stream = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/healthz")
    await stream.send_all(data)
    response, _ = await read_response(stream, client)
    assert header(response, "connection") is None
    client.start_next_cycle()
    data = client.send(h11.Request(method="GET", target="/healthz", headers=[("host", "t")]))
    await stream.send_all(data + (client.send(h11.EndOfMessage()) or b""))
    response, _ = await read_response(stream, client)
    assert header(response, "connection") == "close"
    assert await read_to_eof(stream) == b""


async def test_pipelined_requests(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    one = b"GET /items/1 HTTP/1.1\r\nhost: t\r\n\r\n"
    two = b"GET /items/2 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    await stream.send_all(one + two)
    raw = await read_to_eof(stream)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert b'"id":"1"' in raw
    assert b'"id":"2"' in raw


async def test_idle_keepalive_connection_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, addr = await start(nursery, keepalive_timeout_s=3)
    stream = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/healthz")
    await stream.send_all(data)
    await read_response(stream, client)
    start_time = trio.current_time()
    assert await read_to_eof(stream) == b""
    assert 3 <= trio.current_time() - start_time < 3.5


async def test_max_connections_refuses_only_when_every_connection_is_busy(
        nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def wait(req: Request) -> Response:
        await release.wait()
        return await echo(req)

    router = make_router()
    router.add("GET", "/wait", wait)
    server, addr = await start(nursery, router, max_connections=1)
    first = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/wait")
    await first.send_all(data)
    await trio.testing.wait_all_tasks_blocked()  # its handler is running

    second = await trio.open_tcp_stream(*addr)
    client2, data = request_bytes("GET", "/healthz")
    await second.send_all(data)
    response, body = await read_response(second, client2)
    assert response.status_code == 503
    assert error_code(body) == "unavailable"
    assert header(response, "connection") == "close"
    assert await read_to_eof(second) == b""

    release.set()
    response, _ = await read_response(first, client)
    assert response.status_code == 200
    await first.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.active_connections == 0
    async with httpx.AsyncClient() as http:
        assert (await http.get(url(addr, "/healthz"))).status_code == 200


async def test_a_newcomer_takes_the_place_of_an_idle_keep_alive(
        nursery: trio.Nursery, mock_clock: trio.testing.MockClock) -> None:
    server, addr = await start(nursery, max_connections=1)
    first = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/healthz")
    await first.send_all(data)
    response, _ = await read_response(first, client)
    assert response.status_code == 200  # and now idle, kept alive

    async with httpx.AsyncClient() as http:
        # Just used: its client may be sending the next request, so it is not taken.
        assert (await http.get(url(addr, "/healthz"))).status_code == 503
        mock_clock.jump(ServerLimits().evict_after_s)
        assert (await http.get(url(addr, "/healthz"))).status_code == 200
    assert await read_to_eof(first) == b""  # closed to make room, without an answer
    await trio.testing.wait_all_tasks_blocked()
    assert server.active_connections == 0


# -- body limits ------------------------------------------------------------------------------


async def test_content_length_over_limit_answered_before_body(nursery: trio.Nursery) -> None:
    """2 MiB announced against 1 MiB: 413 arrives while the body is still being sent."""
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(client.send(h11.Request(
        method="POST", target="/echo",
        headers=[("host", "t"), ("content-length", str(2 * 1024 * 1024))],
    )))
    await stream.send_all(client.send(h11.Data(data=b"x" * 65536)))
    response, body = await read_response(stream, client)
    assert response.status_code == 413
    assert error_code(body) == "too_large"
    assert header(response, "connection") == "close"
    # The client may keep sending for a while; the server discards it, then the stream ends.
    await stream.send_all(b"x" * 65536)
    assert await read_to_eof(stream) == b""


async def test_content_length_over_limit_with_httpx(nursery: trio.Nursery) -> None:
    """A client that sends the whole body before reading still gets the 413."""
    _, addr = await start(nursery)
    async with httpx.AsyncClient() as client:
        r = await client.post(url(addr, "/echo"), content=b"x" * (2 * 1024 * 1024))
    assert r.status_code == 413
    assert r.headers["connection"] == "close"
    assert r.json()["error"]["code"] == "too_large"


async def test_route_body_limit(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    async with httpx.AsyncClient() as client:
        assert (await client.post(url(addr, "/small"), content=b"x" * 10)).status_code == 200
        r = await client.post(url(addr, "/small"), content=b"x" * 11)
    assert r.status_code == 413


async def test_chunked_over_limit(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client = h11.Connection(h11.CLIENT)
    data = client.send(h11.Request(
        method="POST", target="/small",
        headers=[("host", "t"), ("transfer-encoding", "chunked")],
    ))
    data += client.send(h11.Data(data=b"x" * 6)) + client.send(h11.Data(data=b"x" * 6))
    await stream.send_all(data)
    response, _ = await read_response(stream, client)
    assert response.status_code == 413
    assert header(response, "connection") == "close"
    await stream.send_all(client.send(h11.EndOfMessage()) or b"")
    assert await read_to_eof(stream) == b""


async def test_chunked_within_limit(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            yield part

    async with httpx.AsyncClient() as client:
        r = await client.post(url(addr, "/echo"), content=chunks())
    assert r.json()["body"] == "abcdef"


async def test_not_found_with_body_not_read(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(client.send(h11.Request(
        method="POST", target="/missing",
        headers=[("host", "t"), ("content-length", str(50 * 1024 * 1024))],
    )))
    response, _ = await read_response(stream, client)
    assert response.status_code == 404
    assert header(response, "connection") == "close"
    await stream.aclose()


async def test_expect_100_continue(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(client.send(h11.Request(
        method="POST", target="/echo",
        headers=[("host", "t"), ("content-length", "5"), ("expect", "100-continue")],
    )))
    interim, _ = await read_response(stream, client)
    assert interim.status_code == 100
    await stream.send_all(client.send(h11.Data(data=b"hello")) +
                          (client.send(h11.EndOfMessage()) or b""))
    response, body = await read_response(stream, client)
    assert response.status_code == 200
    assert msgspec.json.decode(body)["body"] == "hello"

    # Over the limit: the final 413 comes at once, with no 100 before it.
    stream = await trio.open_tcp_stream(*addr)
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(client.send(h11.Request(
        method="POST", target="/small",
        headers=[("host", "t"), ("content-length", "500"), ("expect", "100-continue")],
    )))
    response, _ = await read_response(stream, client)
    assert response.status_code == 413
    assert await read_to_eof(stream) == b""


# -- malformed and slow clients ---------------------------------------------------------------


async def test_malformed_request_is_400(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
    response, body = parse_raw(await read_to_eof(stream))
    assert response.status_code == 400
    assert error_code(body) == "bad_request"
    assert header(response, "connection") == "close"


async def test_bad_chunk_encoding_is_400(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(
        b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
    )
    response, body = parse_raw(await read_to_eof(stream), "POST")
    assert response.status_code == 400
    assert error_code(body) == "bad_request"


async def test_oversized_headers_is_431(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery, max_header_bytes=4096)
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 8192)
    response, _ = parse_raw(await read_to_eof(stream))
    assert response.status_code == 431


async def test_slow_body_gets_408_while_others_are_served(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, addr = await start(nursery, body_timeout_s=5)
    slow = await trio.open_tcp_stream(*addr)
    client = h11.Connection(h11.CLIENT)
    await slow.send_all(client.send(h11.Request(
        method="POST", target="/echo", headers=[("host", "t"), ("content-length", "10")],
    )) + client.send(h11.Data(data=b"abc")))
    start_time = trio.current_time()
    async with httpx.AsyncClient() as http:
        assert (await http.get(url(addr, "/healthz"))).status_code == 200
    assert trio.current_time() - start_time < 1
    response, body = await read_response(slow, client)
    assert response.status_code == 408
    assert error_code(body) == "timeout"
    assert header(response, "connection") == "close"
    assert 5 <= trio.current_time() - start_time < 5.5


async def test_slowloris_headers(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _, addr = await start(nursery, header_timeout_s=4)
    start_time = trio.current_time()
    silent = await trio.open_tcp_stream(*addr)
    partial = await trio.open_tcp_stream(*addr)
    await partial.send_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n")
    assert await read_to_eof(silent) == b""
    assert 4 <= trio.current_time() - start_time < 4.5
    response, _ = parse_raw(await read_to_eof(partial))
    assert response.status_code == 408
    assert 4 <= trio.current_time() - start_time < 4.5


async def test_client_reset_does_not_hurt_server(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    for _ in range(3):
        stream = await trio.open_tcp_stream(*addr)
        await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nab")
        await trio.aclose_forcefully(stream)
    async with httpx.AsyncClient() as client:
        assert (await client.get(url(addr, "/healthz"))).status_code == 200


# -- lifecycle --------------------------------------------------------------------------------


async def test_graceful_stop(nursery: trio.Nursery) -> None:
    entered = trio.Event()
    release = trio.Event()

    async def slow(req: Request) -> Response:
        entered.set()
        await release.wait()
        return json_response(200, {"done": True})

    router = make_router()
    router.add("GET", "/slow", slow)
    server = HTTPServer(router)
    served = trio.Event()

    async def run_server(*, task_status: trio.TaskStatus[Addr] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve("127.0.0.1:0", task_status=task_status)
        served.set()

    addr: Addr = await nursery.start(run_server)
    assert server.bound == addr

    idle = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/healthz")
    await idle.send_all(data)
    await read_response(idle, client)

    responses: list[httpx.Response] = []

    async def call_slow() -> None:
        async with httpx.AsyncClient() as http:
            responses.append(await http.get(url(addr, "/slow")))

    nursery.start_soon(call_slow)
    await entered.wait()
    assert server.in_flight == 1

    stopped = trio.Event()

    async def stop() -> None:
        await server.stop()
        stopped.set()

    nursery.start_soon(stop)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*addr)
    assert await read_to_eof(idle) == b""  # idle keep-alive connection closed at once
    assert not stopped.is_set()
    assert not served.is_set()

    release.set()
    await stopped.wait()
    assert served.is_set()
    [response] = responses
    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    assert server.active_connections == 0
    await server.stop()  # idempotent


async def test_stop_cancels_after_drain_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    entered = trio.Event()

    async def hang(req: Request) -> Response:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    server, addr = await start(nursery, hang, drain_timeout_s=2)
    stream = await trio.open_tcp_stream(*addr)
    _, data = request_bytes("GET", "/")
    await stream.send_all(data)
    await entered.wait()
    start_time = trio.current_time()
    await server.stop()
    assert 2 <= trio.current_time() - start_time < 2.5
    assert await read_to_eof(stream) == b""
    assert server.in_flight == 0


async def test_cancelling_serve_closes_everything(nursery: trio.Nursery) -> None:
    """Cancellation tears down at once; an in-flight handler is cancelled, never a 500."""
    entered = trio.Event()

    async def hang(req: Request) -> Response:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    router = make_router()
    router.add("GET", "/hang", hang)
    async with trio.open_nursery() as inner:
        server, addr = await start(inner, router)
        idle = await trio.open_tcp_stream(*addr)
        client, data = request_bytes("GET", "/healthz")
        await idle.send_all(data)
        await read_response(idle, client)
        busy = await trio.open_tcp_stream(*addr)
        await busy.send_all(request_bytes("GET", "/hang")[1])
        await entered.wait()
        inner.cancel_scope.cancel()
    assert await read_to_eof(idle) == b""
    assert await read_to_eof(busy) == b""
    assert server.active_connections == 0
    assert server.in_flight == 0
    with pytest.raises(OSError):
        await trio.open_tcp_stream(*addr)


async def test_serve_runs_once(nursery: trio.Nursery) -> None:
    server, _ = await start(nursery)
    with pytest.raises(RuntimeError):
        await server.serve("127.0.0.1:0")


# -- details ----------------------------------------------------------------------------------


async def test_handler_sees_headers_and_extras(nursery: trio.Nursery) -> None:
    seen: list[Request] = []

    async def look(req: Request) -> Response:
        seen.append(req)
        return Response(204, [("x-seen", "1")])

    _, addr = await start(nursery, look)
    async with httpx.AsyncClient() as client:
        r = await client.get(
            url(addr, "/h"), headers={b"X-Token": b"abc", b"X-Latin": "caf\xe9".encode("latin-1")}
        )
    assert r.status_code == 204
    assert "content-length" not in r.headers  # none on a 204
    assert r.headers["x-seen"] == "1"
    [req] = seen
    assert req.header("x-token") == "abc"
    assert req.header("X-LATIN") == "caf\xe9"
    assert ("x-token", "abc") in req.headers
    assert req.headers[0][0] == "host"


async def test_not_found_without_body_keeps_connection(nursery: trio.Nursery) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("GET", "/missing")
    await stream.send_all(data)
    response, _ = await read_response(stream, client)
    assert response.status_code == 404
    assert header(response, "connection") is None
    client.start_next_cycle()
    data = client.send(h11.Request(method="GET", target="/healthz", headers=[("host", "t")]))
    await stream.send_all(data + (client.send(h11.EndOfMessage()) or b""))
    response, _ = await read_response(stream, client)
    assert response.status_code == 200


async def test_method_not_allowed_with_body_is_answered_and_closed(
    nursery: trio.Nursery,
) -> None:
    _, addr = await start(nursery)
    stream = await trio.open_tcp_stream(*addr)
    client, data = request_bytes("PUT", "/items/1", body=b"x" * 1000)
    await stream.send_all(data)
    response, _ = await read_response(stream, client)
    assert response.status_code == 405
    assert header(response, "allow") == "GET, DELETE"
    assert header(response, "connection") == "close"
    assert await read_to_eof(stream) == b""


async def test_head_route_sends_no_body(nursery: trio.Nursery) -> None:
    router = Router()
    router.add("HEAD", "/x", lambda req: _ok_json())
    _, addr = await start(nursery, router)
    async with httpx.AsyncClient() as client:
        r = await client.head(url(addr, "/x"))
        assert r.status_code == 200
        assert r.headers["content-length"] == "11"
        assert r.content == b""
        assert (await client.get(url(addr, "/x"))).status_code == 405


async def _ok_json() -> Response:
    return json_response(200, {"ok": True})


async def test_invalid_response_header_becomes_500(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def bad(req: Request) -> Response:
        return Response(200, [("x-bad", "line\r\nbreak")], b"hi")

    _, addr = await start(nursery, bad)
    with caplog.at_level(logging.ERROR, logger="orrad.http.server"):
        async with httpx.AsyncClient() as client:
            r = await client.get(url(addr, "/"))
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal"
    assert "x-bad" not in r.headers


async def test_slow_reader_is_dropped(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    big = b"x" * (64 * 1024 * 1024)

    async def huge(req: Request) -> Response:
        return Response(200, [], big)

    server, addr = await start(nursery, huge, send_timeout_s=3)
    stream = await trio.open_tcp_stream(*addr)
    await stream.send_all(request_bytes("GET", "/")[1])
    # Never read: the server's send_all blocks once the socket buffers are full. The mock
    # clock only moves while every task is blocked, so these sleeps are virtual time.
    await trio.sleep(2.9)
    assert server.active_connections == 1
    await trio.sleep(0.2)
    assert server.active_connections == 0
    await stream.aclose()


async def test_a_response_larger_than_the_socket_takes_at_once_arrives_whole(
    nursery: trio.Nursery,
) -> None:
    """The first write takes what the socket buffer holds; the rest follows through
    send_all, and the connection serves the next request."""
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB, more than any socket buffer here

    async def huge(req: Request) -> Response:
        return Response(200, [], big)

    _, addr = await start(nursery, huge)
    async with httpx.AsyncClient() as client:
        for _ in range(2):
            r = await client.get(url(addr, "/"))
            assert r.status_code == 200 and r.content == big


def test_server_header_is_validated() -> None:
    with pytest.raises(ValueError, match="server_header"):
        HTTPServer(echo, server_header="bad\r\nx: y")


async def test_stop_before_serve() -> None:
    server = HTTPServer(echo)
    await server.stop()
    with pytest.raises(RuntimeError):
        await server.serve("127.0.0.1:0")


async def test_bad_listen_address() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        await HTTPServer(echo).serve("nonsense")
