"""The servers the benchmark runs in their own processes.

``python -m tests.bench.servers bare --port P``
    The baseline: a bare trio + h11 JSON echo endpoint with no orrad code at all. Every
    ``POST`` (any path) is answered 200 with ``{"id", "message": "echo: <message>"}`` taken
    from the JSON request body; connections are kept alive for as long as the client wants.

``python -m tests.bench.servers fake-openai --port-file F [--delay 0.1]``
    :class:`~tests.fakes.llm.FakeOpenAI` (the fake the test suite uses: real wire format,
    request validation) answering every chat completion with ``"ok"`` after ``--delay``
    seconds. It binds a free port and writes its ``base_url`` to ``F`` once it listens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import h11
import trio

from tests.fakes.llm import FakeOpenAI, Step

__all__ = ["DelayedOpenAI", "echo_connection", "main"]

log = logging.getLogger("bench.servers")

READ_SIZE = 65536
MAX_BODY_BYTES = 1 << 20
RECORD_TRIM_S = 1.0


# -- bare trio + h11 -----------------------------------------------------------------------


def _echo_body(body: bytes) -> bytes:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return json.dumps({"error": "send a JSON object"}).encode()
    return json.dumps({"id": doc.get("id"), "message": f"echo: {doc.get('message')}"}).encode()


async def echo_connection(stream: trio.SocketStream) -> None:
    """Serve one connection: keep-alive, one request at a time, JSON in, JSON out."""
    conn = h11.Connection(h11.SERVER)
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(READ_SIZE))
            elif isinstance(event, h11.Request):
                body.clear()
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    return
            elif isinstance(event, h11.EndOfMessage):
                payload = _echo_body(bytes(body))
                headers = [("content-type", "application/json"),
                           ("content-length", str(len(payload)))]
                out = conn.send(h11.Response(status_code=200, headers=headers)) or b""
                out += conn.send(h11.Data(data=payload)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
            else:  # ConnectionClosed (or PAUSED, which cannot happen between cycles)
                return
    except (h11.ProtocolError, trio.BrokenResourceError, OSError):
        return
    finally:
        await trio.aclose_forcefully(stream)


async def serve_bare(port: int) -> None:
    """Serve :func:`echo_connection` on ``127.0.0.1:port`` until cancelled."""
    log.info("bare h11 echo listening on 127.0.0.1:%d", port)
    await trio.serve_tcp(echo_connection, port, host="127.0.0.1")


# -- fake OpenAI -----------------------------------------------------------------------------


class DelayedOpenAI(FakeOpenAI):
    """:class:`FakeOpenAI` whose unscripted answer (``"ok"``) waits ``delay_s`` first."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def default_reply(self) -> Step:
        """The plain ``"ok"`` completion, delayed."""
        return self._message_step({"role": "assistant", "content": "ok"}, "stop", (10, 5),
                                  self.delay_s)


async def serve_fake_openai(port_file: Path, delay_s: float) -> None:
    """Run :class:`DelayedOpenAI` until cancelled; write its ``base_url`` to ``port_file``.

    The fake records every request; the records are dropped every second (after logging
    any the fake rejected) so memory stays flat during a long run.
    """
    fake = DelayedOpenAI(delay_s)
    async with fake:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(fake.base_url)
        tmp.replace(port_file)
        log.info("fake OpenAI at %s answering after %.3f s", fake.base_url, delay_s)
        seen = rejected = 0
        while True:
            await trio.sleep(RECORD_TRIM_S)
            records, fake.requests = fake.requests, []
            seen += len(records)
            for record in records:
                if record.rejected:
                    rejected += 1
                    if rejected <= 5:
                        log.warning("fake OpenAI rejected a request: %s", record.rejected)
            log.debug("fake OpenAI: %d requests, %d rejected", seen, rejected)


def main(argv: list[str] | None = None) -> int:
    """Run the server named on the command line until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="server", required=True)
    bare = sub.add_parser("bare", help="bare trio + h11 JSON echo")
    bare.add_argument("--port", type=int, required=True)
    fake = sub.add_parser("fake-openai", help="FakeOpenAI answering after --delay seconds")
    fake.add_argument("--port-file", type=Path, required=True)
    fake.add_argument("--delay", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("BENCH_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.server == "bare":
            trio.run(serve_bare, args.port)
        else:
            trio.run(serve_fake_openai, args.port_file, args.delay)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
