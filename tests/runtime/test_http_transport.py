"""The providers' shared transport: bounded concurrency, warm connections reused."""

from __future__ import annotations

from functools import partial

import h11
import trio
import trio.testing

from orrad.runtime.providers.http import make_http_client


class CountingServer:
    """An HTTP/1.1 server that counts connections and the requests it holds at once."""

    def __init__(self) -> None:
        self.connections = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.answered = 0
        self.release = trio.Event()

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
            if isinstance(event, h11.EndOfMessage):
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                await self.release.wait()
                self.in_flight -= 1
                self.answered += 1
                body = b"ok"
                await stream.send_all(conn.send(h11.Response(
                    status_code=200, headers=[("content-length", str(len(body)))])) or b"")
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


async def test_requests_beyond_the_limit_wait_and_connections_are_reused() -> None:
    server = CountingServer()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with make_http_client(3) as client:
            async def one() -> None:
                response = await client.post(f"http://127.0.0.1:{port}/x", content=b"{}")
                assert response.content == b"ok"

            async with trio.open_nursery() as calls:
                for _ in range(8):
                    calls.start_soon(one)
                await trio.testing.wait_all_tasks_blocked()
                assert server.in_flight == 3  # the other five wait for a free pool
                server.release.set()
            assert server.most_in_flight == 3
            assert server.answered == 8
            assert server.connections == 3  # every later request rode a kept-alive connection
            for _ in range(4):  # one at a time: always the same, most recently used connection
                await one()
            assert server.connections == 3
        nursery.cancel_scope.cancel()
