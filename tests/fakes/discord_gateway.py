"""Gateway half of the fake Discord: constants, records, sessions and per-connection state.

Nothing in here listens or decides; :class:`tests.fakes.discord.FakeDiscord` owns the
sockets and the protocol logic and uses these types to keep its state and its record.
See ``/work/shared/reference/discord.md`` §1 and §5.3 for the behaviour being modelled.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio
from trio_websocket import WebSocketConnection

__all__ = [
    "CLIENT_OPS",
    "DIRECT_MESSAGES",
    "DIRECT_MESSAGE_TYPING",
    "GUILDS",
    "GUILD_MEMBERS",
    "GUILD_MESSAGES",
    "GUILD_MESSAGE_TYPING",
    "GUILD_PRESENCES",
    "INVALIDATING_CLOSE_CODES",
    "MESSAGE_CONTENT",
    "OP_DISPATCH",
    "OP_HEARTBEAT",
    "OP_HEARTBEAT_ACK",
    "OP_HELLO",
    "OP_IDENTIFY",
    "OP_INVALID_SESSION",
    "OP_RECONNECT",
    "OP_RESUME",
    "PRIVILEGED_INTENTS",
    "VALID_INTENTS",
    "ConnectionRecord",
    "GatewayFrame",
    "LiveConnection",
    "Session",
    "compress_chunks",
    "encode_payload",
    "parse_client_frames",
]

# -- opcodes (discord.md §1.3) -------------------------------------------------------------

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11
OP_REQUEST_SOUNDBOARD_SOUNDS = 31
OP_REQUEST_CHANNEL_INFO = 43

CLIENT_OPS = frozenset({
    OP_HEARTBEAT, OP_IDENTIFY, OP_PRESENCE_UPDATE, OP_VOICE_STATE_UPDATE, OP_RESUME,
    OP_REQUEST_GUILD_MEMBERS, OP_REQUEST_SOUNDBOARD_SOUNDS, OP_REQUEST_CHANNEL_INFO,
})
"""Opcodes a client may send; anything else closes the connection with 4001."""

# -- intents (discord.md §2.1) -------------------------------------------------------------

GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_TYPING = 1 << 11
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_TYPING = 1 << 14
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
VALID_INTENTS = sum(1 << bit for bit in (*range(17), 20, 21, 24, 25))
"""Every intent bit Discord documents; a bit outside this set closes with 4013."""

INVALIDATING_CLOSE_CODES = frozenset({4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014})
"""Server close codes after which the session cannot be resumed (the docs' "start a new
session" / "do not reconnect" rows). Every other server close, including 1000/1001 from the
server and an abrupt drop, leaves the session resumable for ``resume_window_s``."""


def encode_payload(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> str:
    """The JSON text of one gateway payload, always with all four keys (discord.md §5.3)."""
    return msgspec.json.encode({"op": op, "d": d, "s": s, "t": t}).decode()


def compress_chunks(compressor: Any, raw: bytes, parts: int) -> list[bytes]:
    """zlib-stream: deflate ``raw`` with the connection's shared context and ``Z_SYNC_FLUSH``.

    The result is split into ``parts`` WebSocket messages (only the last one ends with the
    ``00 00 ff ff`` suffix), so clients must buffer until they see the suffix.
    """
    data = compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)
    parts = max(1, min(parts, len(data)))
    size = -(-len(data) // parts)
    return [data[i:i + size] for i in range(0, len(data), size)]


def parse_client_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Cut complete (masked) client WebSocket frames off ``buffer``: ``(opcode, payload)``.

    Only used for frozen connections, where the fake reads the raw TCP stream itself so
    that nothing (not even a close echo or a pong) goes back to the client.
    """
    frames: list[tuple[int, bytes]] = []
    while len(buffer) >= 2:
        length, pos = buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                break
            length, pos = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                break
            length, pos = int.from_bytes(buffer[2:10], "big"), 10
        mask = b""
        if buffer[1] & 0x80:
            if len(buffer) < pos + 4:
                break
            mask, pos = bytes(buffer[pos:pos + 4]), pos + 4
        if len(buffer) < pos + length:
            break
        payload = bytes(buffer[pos:pos + length])
        opcode = buffer[0] & 0x0F
        del buffer[:pos + length]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append((opcode, payload))
    return frames


@dataclass
class GatewayFrame:
    """One gateway payload, in either direction, as it went over the wire.

    ``raw`` is the JSON text (before zlib compression for server frames). For frames the
    fake received, ``server_seq`` is the last sequence number the fake had sent on that
    connection when the frame arrived, so ``frame.d == frame.server_seq`` checks that a
    heartbeat carried the latest ``s``. Frames the client sent that were not valid JSON
    have ``op`` None.
    """

    direction: Literal["recv", "sent"]
    connection: int
    op: int | None
    d: Any
    s: int | None
    t: str | None
    time: float
    raw: str
    server_seq: int | None = None


@dataclass
class ConnectionRecord:
    """What happened on one WebSocket connection (index = position in ``connections``).

    Close codes:

    * ``client_close_code``: the code of a close frame the *client initiated*; 1006 when the
      client vanished without a close frame; None when the server closed (or dropped) first.
    * ``server_close_code``: the code the fake closed with; None if it did not close it
      (``dropped_by_server`` is True after :meth:`FakeDiscord.drop_connection`).
    """

    index: int
    endpoint: Literal["gateway", "resume"]
    """Which listener accepted it: the base gateway URL or the resume URL from READY."""
    url: str
    """The full URL the client opened (scheme, host, port, path and query)."""
    path: str
    query: dict[str, str]
    opened_at: float
    compress: str | None = None
    closed_at: float | None = None
    client_close_code: int | None = None
    client_close_reason: str | None = None
    server_close_code: int | None = None
    server_close_reason: str | None = None
    dropped_by_server: bool = False
    rejected_status: int | None = None
    """Set when the HTTP upgrade was refused (``reject_upgrades`` knob)."""
    hello_sent: bool = False
    first_op_sent: int | None = None
    identify: dict[str, Any] | None = None
    resume: dict[str, Any] | None = None
    session_id: str | None = None
    outcome: str | None = None
    """"ready", "resumed", "invalid_session:<bool>" or "closed:<code>" (server's verdict)."""
    resume_query_matched: bool | None = None
    """For a successful resume: whether the query equals that of the identifying connection."""
    closed: trio.Event = field(default_factory=trio.Event, repr=False, compare=False)

    @property
    def is_open(self) -> bool:
        """True until either side closed (or the TCP connection went away)."""
        return self.closed_at is None


@dataclass
class Session:
    """A gateway session, created by a successful IDENTIFY and resumable until it dies."""

    session_id: str
    token: str
    intents: int
    identify_connection: int
    query: dict[str, str]
    shard: list[int] | None = None
    seq: int = 0
    buffer: deque[dict[str, Any]] = field(default_factory=deque)
    """Replayable dispatches (``{"op","d","s","t"}``), oldest first, bounded."""
    evicted_upto: int = 0
    """Highest ``s`` pushed out of the bounded buffer (older resumes cannot be replayed)."""
    conn: LiveConnection | None = None
    """The connection events are delivered to right now (None while detached)."""
    invalidated: bool = False
    resumable_until: float | None = None
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False)

    def alive(self, now: float) -> bool:
        """Whether events for this session are kept (delivered now or replayable later)."""
        if self.invalidated:
            return False
        if self.conn is not None or self.resumable_until is None:
            return True
        return now <= self.resumable_until


class LiveConnection:
    """Server-side state of one open WebSocket connection."""

    def __init__(
        self, record: ConnectionRecord, ws: WebSocketConnection, stream: trio.SocketStream,
    ) -> None:
        self.record = record
        self.index = record.index
        self.ws = ws
        self.stream = stream
        self.compressor: Any = (
            zlib.compressobj() if record.compress == "zlib-stream" else None
        )
        self.send_lock = trio.Lock()
        self.authenticated = False
        self.session: Session | None = None
        self.last_seq_sent: int | None = None
        self.hello_at: float | None = None
        self.last_beat: float | None = None
        self.frozen = False
        self.closing = False
        self.recv_times: deque[float] = deque()
        self.nursery: trio.Nursery | None = None
        self.ws_nursery: trio.Nursery | None = None
        """Runs trio-websocket's reader; cancelled to freeze the connection."""
