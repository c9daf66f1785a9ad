"""Nothing accepted is lost, nothing is answered twice (CONTRACT §4, §7): ``orrad run`` is
SIGKILLed at 10 points while 100 signed asynchronous webhook messages are in flight, and
restarted each time on the same state folder.

The clients behave like real Standard Webhooks senders: each message is re-sent with the same
``webhook-id`` (and a fresh timestamp and signature) until it gets its 202. The callback
receiver records every POST and the daemon "epoch" it arrived in (how many kills came
before). After the last restart everything must settle:

* every acknowledged message gets a callback with its reply (never an error);
* a callback is repeated only across a kill (never twice within one process's life), at
  most :data:`CALLBACK_CONCURRENCY` ids per kill, always with the same ``webhook-id`` and
  the same body, so a receiver that dedupes on ``webhook-id`` sees each answer once;
* every session holds each message exactly once as ``user`` and its reply exactly once as
  ``assistant``, in pairs (a lane runs one message at a time);
* ``PRAGMA integrity_check`` of the state database is ``ok`` and the last process exits 0
  on SIGTERM.

Randomness (seeded) only moves the kill points and the model's latency; the assertions do not
depend on it.
"""

from __future__ import annotations

import base64
import json
import random
import signal
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import standardwebhooks
import trio

from orrad.http import HTTPServer, Request, Response, Router, json_response
from tests.daemon_process import DaemonProcess, free_port
from tests.fakes.llm import FakeOpenAI, Step

SEED = 0x0DDA
MESSAGES = 100
NAMESPACES = 10
KILLS = 10
SENDER_CONCURRENCY = 8  # messages the clients have in flight at once
# The daemon sends at most this many callbacks of one channel at once (DELIVERY_CONCURRENCY
# in orrad/router.py as of writing), so at most this many can be in flight (received here
# but not yet recorded as delivered) when a kill hits: the bound on repeats per kill.
CALLBACK_CONCURRENCY = 16
MODEL_DELAY_S = (0.02, 0.08)  # per completion, so runs are genuinely in flight at a kill
RESEND_AFTER_S = 0.05  # a client's pause before re-sending an unacknowledged message
DRAIN_S = 0.05  # after a kill: callbacks the dead process already sent are read here
QUIET_S = 1.0  # after the last answer: a stray repeat would arrive here
SETTLE_S = 60.0  # after the last restart, everything is answered within this
SECRET = "whsec_" + base64.b64encode(b"orrad-kill-webhook-test-key-0123").decode()
CHANNEL = "hooks"


def text_of(i: int) -> str:
    return f"hello {i}"


def reply_to(text: str) -> str:
    return f"answer: {text}"


def namespace_of(i: int) -> str:
    return f"n{i % NAMESPACES}"


class AnsweringOpenAI(FakeOpenAI):
    """Answers every completion with ``answer: <last user text>`` after a seeded delay."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def default_reply(self) -> Step:
        def build(req: dict[str, Any]) -> Any:
            last = req["messages"][-1]
            assert last["role"] == "user", req["messages"]
            return {"id": self.next_id("chatcmpl-"), "object": "chat.completion",
                    "created": 0, "model": req.get("model"),
                    "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                 "message": {"role": "assistant",
                                             "content": reply_to(last["content"])}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                              "total_tokens": 15}}

        return Step(200, build, [], self.rng.uniform(*MODEL_DELAY_S))


@dataclass
class Callback:
    webhook_id: str | None
    body: Any
    epoch: int
    signed: bool


@dataclass
class Run:
    """What the clients and the receiver saw, shared by the test's tasks."""

    epoch: int = 0  # kills so far, counted when the next process starts
    acked: set[str] = field(default_factory=set)
    callbacks: dict[str, list[Callback]] = field(default_factory=lambda: defaultdict(list))
    resends: int = 0
    kills: list[tuple[int, int]] = field(default_factory=list)  # (acked, answered) at each
    all_acked: trio.Event = field(default_factory=trio.Event)
    all_answered: trio.Event = field(default_factory=trio.Event)

    @property
    def progress(self) -> int:
        return len(self.acked) + len(self.callbacks)

    async def on_callback(self, request: Request) -> Response:
        try:
            standardwebhooks.Webhook(SECRET).verify(request.body, dict(request.headers))
            signed = True
        except standardwebhooks.WebhookVerificationError:
            signed = False
        body = msgspec.json.decode(request.body)
        key = str(body.get("id"))
        self.callbacks[key].append(
            Callback(request.header("webhook-id"), body, self.epoch, signed))
        if len(self.callbacks) >= MESSAGES:
            self.all_answered.set()
        return json_response(200, {"ok": True})


def signed_headers(msg_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers with a fresh timestamp (so each attempt is signed anew)."""
    when = datetime.now(UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": standardwebhooks.Webhook(SECRET).sign(
                msg_id, when, body.decode()),
            "content-type": "application/json"}


async def send_all(run: Run, hook_url: str, callback_url: str) -> None:
    """Post every message, re-sending each with the same id until it is acknowledged."""
    async def send(client: httpx.AsyncClient, i: int) -> None:
        msg_id = f"m-{i}"
        body = msgspec.json.encode({"message": text_of(i), "namespace": namespace_of(i),
                                    "callback_url": callback_url})
        while True:
            try:
                response = await client.post(
                    hook_url, content=body, headers=signed_headers(msg_id, body))
            except httpx.TransportError:  # daemon dead or killed mid-request
                pass
            else:
                if response.status_code == 202:
                    assert response.json() == {"id": msg_id, "status": "accepted"}
                    run.acked.add(msg_id)
                    return
                # 503 while shutting down / store busy is retryable; any other refusal of
                # a well-formed, correctly signed request is a daemon bug.
                assert response.status_code in (502, 503, 504), (
                    msg_id, response.status_code, response.text)
            run.resends += 1
            await trio.sleep(RESEND_AFTER_S)

    async def worker(client: httpx.AsyncClient, todo: Iterator[int]) -> None:
        for i in todo:  # shared: the workers take the messages in order
            await send(client, i)

    todo = iter(range(MESSAGES))
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
        for _ in range(SENDER_CONCURRENCY):
            nursery.start_soon(worker, client, todo)
    run.all_acked.set()


async def read_history(daemon: DaemonProcess, namespace: str) -> list[dict[str, Any]]:
    """``orrad history --json`` (reads ``state_dir`` directly, the daemon stopped)."""
    result = await trio.run_process(
        [sys.executable, "-m", "orrad", "history", "-c", str(daemon.config_path), namespace,
         "--json"],
        capture_stdout=True, capture_stderr=True, env=daemon.env, cwd=daemon.root,
        check=False)
    assert result.returncode == 0, (namespace, result.stderr.decode(errors="replace"))
    messages: list[dict[str, Any]] = json.loads(result.stdout)["messages"]
    return messages


def session_problems(namespace: str, ids: list[int], messages: list[dict[str, Any]]
                     ) -> list[str]:
    """Each id's text once as ``user``, its reply once as ``assistant``, in pairs."""
    turns = [(m["role"], m.get("content")) for m in messages]
    counts = Counter(turns)
    problems = []
    for i in ids:
        user, reply = counts[("user", text_of(i))], counts[("assistant", reply_to(text_of(i)))]
        if (user, reply) != (1, 1):
            problems.append(f"{namespace} m-{i}: {user} user, {reply} assistant messages")
    expected = {("user", text_of(i)) for i in ids} | {
        ("assistant", reply_to(text_of(i))) for i in ids}
    if stray := [t for t in turns if t not in expected]:
        problems.append(f"{namespace}: unexpected messages {stray}")
    pairs = [(turns[k], turns[k + 1]) for k in range(0, len(turns) - 1, 2)]
    if len(turns) % 2 or any(u[0] != "user" or a != ("assistant", reply_to(str(u[1])))
                             for u, a in pairs):
        problems.append(f"{namespace}: not user/reply pairs: {turns}")
    return problems


def integrity(path: Path) -> list[Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


async def test_sigkill_at_ten_points_with_signed_async_webhooks_in_flight(
        tmp_path: Path) -> None:
    rng = random.Random(SEED)
    run = Run()
    # Kill points in units of progress (acknowledgements + first callbacks, 0..200), spread
    # over the run, plus a short jitter so the kill lands anywhere in the pipeline.
    kill_at = sorted(rng.sample(range(3, 2 * MESSAGES - 10), KILLS))
    jitter = [rng.uniform(0, 0.03) for _ in range(KILLS)]
    hook_port = free_port()  # fixed: the clients keep re-sending to the same address
    router = Router()
    router.add("POST", "/cb", run.on_callback)
    daemons: list[DaemonProcess] = []

    async with AnsweringOpenAI(random.Random(SEED + 1)) as fake, \
            trio.open_nursery() as nursery:
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        callback_url = f"http://{host}:{port}/cb"
        config = (f"providers:\n  fake: {{kind: openai, base_url: '{fake.base_url}', "
                  "model: m, api_key: k, max_retries: 0}\n"
                  "agents:\n  default: {provider: fake}\n")

        async def start_daemon() -> DaemonProcess:
            daemon = DaemonProcess(tmp_path, extra_config=config)  # same folder and state
            daemon.stderr_path = tmp_path / f"stderr-{run.epoch}.log"  # keep every epoch's
            if not daemons:
                daemon.write_channel(f"{CHANNEL}.yaml", (
                    f"kind: webhook\nlisten: 127.0.0.1:{hook_port}\n"
                    f"auth:\n  signing_secret: {SECRET}\n"))
            daemons.append(daemon)
            await daemon.start()
            return daemon

        with trio.fail_after(SETTLE_S * 2):
            daemon = await start_daemon()
            nursery.start_soon(send_all, run, f"http://127.0.0.1:{hook_port}/hook",
                               callback_url)
            for threshold, delay in zip(kill_at, jitter, strict=True):
                # Each process first gets something new done (so every kill finds a serving
                # daemon with messages in flight, not one still starting).
                floor = run.progress + 1
                while run.progress < max(threshold, floor):
                    await trio.sleep(0.005)
                await trio.sleep(delay)
                run.kills.append((len(run.acked), len(run.callbacks)))
                daemon.signal(signal.SIGKILL)
                assert await daemon.stop() == -signal.SIGKILL, daemon.stderr()
                await trio.sleep(DRAIN_S)
                run.epoch += 1
                daemon = await start_daemon()
        with trio.fail_after(SETTLE_S):
            await run.all_acked.wait()
            await run.all_answered.wait()
        await trio.sleep(QUIET_S)
        code = await daemon.stop()
        assert code == 0, daemon.stderr()[-3000:]
        nursery.cancel_scope.cancel()

    ids = [f"m-{i}" for i in range(MESSAGES)]
    assert run.acked == set(ids)
    assert sorted(run.callbacks) == sorted(ids), sorted(set(run.callbacks) ^ set(ids))

    # Every acknowledged message is answered with its reply, under its namespace.
    prefix = f"webhook:{CHANNEL}"
    for i, msg_id in enumerate(ids):
        first = run.callbacks[msg_id][0].body
        assert "error" not in first, first
        assert (first["id"], first["message"], first["namespace"]) == (
            msg_id, reply_to(text_of(i)), f"{prefix}:{namespace_of(i)}"), first

    # Repeats: same webhook-id, same body, signed; never twice within one process's life.
    webhook_ids: dict[str | None, str] = {}
    repeats_per_kill: Counter[int] = Counter()
    for msg_id, received in run.callbacks.items():
        assert all(c.signed for c in received), (msg_id, received)
        assert {c.webhook_id for c in received} == {received[0].webhook_id}, received
        assert received[0].webhook_id is not None
        assert webhook_ids.setdefault(received[0].webhook_id, msg_id) == msg_id, (
            "two messages share a webhook-id", received[0].webhook_id)
        assert all(c.body == received[0].body for c in received), received
        epochs = [c.epoch for c in received]
        assert len(set(epochs)) == len(epochs), (
            f"{msg_id} called back twice without a kill in between", epochs)
        # A repeat means the callback was in flight at the kill that ended the epoch of
        # the previous delivery.
        for previous in epochs[:-1]:
            repeats_per_kill[previous + 1] += 1
    # Shown with any failure below (pytest prints captured output).
    print(f"kills at (acked, answered): {run.kills}; resends: {run.resends}; "
          f"callbacks repeated per kill: {dict(sorted(repeats_per_kill.items()))}")
    assert all(n <= CALLBACK_CONCURRENCY for n in repeats_per_kill.values()), repeats_per_kill

    # Sessions: each message once as user, its reply once as assistant.
    histories: dict[str, list[dict[str, Any]]] = {}

    async def fetch(ns: str) -> None:
        histories[ns] = await read_history(daemon, ns)

    async with trio.open_nursery() as nursery:
        for n in range(NAMESPACES):
            nursery.start_soon(fetch, f"{prefix}:n{n}")
    problems = [
        problem for n in range(NAMESPACES)
        for problem in session_problems(f"{prefix}:n{n}", list(range(n, MESSAGES, NAMESPACES)),
                                        histories[f"{prefix}:n{n}"])]
    assert not problems, "\n".join(problems)

    assert integrity(tmp_path / ".orrad" / "orrad.sqlite3") == ["ok"]
