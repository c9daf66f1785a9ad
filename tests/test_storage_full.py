"""A full disk under ``state_dir``: a real ``orrad run`` stops acknowledging, says why, stays
up, and recovers by itself once space returns, with nothing it acknowledged lost.

CONTRACT §4 (503 ``unavailable`` when the state store is unwritable), §5 (``/readyz``), §7
(nothing accepted is lost; one log line per event). ``state_dir`` is a 16 MiB tmpfs, filled
to the last byte by a filler file (SQLite's WAL only reuses space after a checkpoint, so
once the filesystem has no free block every commit needs a block it cannot get), and
emptied again by deleting the filler.

Requests acknowledged (2xx) before, during and after the outage must be answered exactly
once: a synchronous one with its 200, an asynchronous one with exactly one callback. Two
of them are sent just before the disk fills and are still running (the fake OpenAI
answers them after a delay) when it does: the asynchronous one was acknowledged and gets
its callback; the synchronous one, told nothing yet, gets its answer or a 503 (never a 2xx
whose exchange could not be stored) and its retry after the recovery the answer. A request
that got a 503 stored nothing; the test sends it again with the same id after the recovery
and it must then be answered once.
Finally a restart on the same state must neither re-send a callback nor re-run a request.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from orrad.http import HTTPServer, Request, Response, Router, json_response
from tests.daemon_process import RUNNING, DaemonProcess, free_port
from tests.fakes.llm import FakeOpenAI
from tests.llm_steps import echo_step

TOKEN = "hook-token"
SLOW_S = 1.5  # how long the fake model takes for the requests in flight when the disk fills
REPLY_TIMEOUT_S = 6
STORE_LINE = re.compile(r"state (store|database)|disk (is )?full|no space left", re.IGNORECASE)


@pytest.fixture
def full_disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test (skipped when mounting is not possible)."""
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs for state_dir needs root (running as uid {os.geteuid()})")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 16 MiB tmpfs at {mount_point}: "
                    f"{(mounted.stderr or mounted.stdout).strip()}")
    try:
        yield mount_point
    finally:
        for process in list(RUNNING):  # a failed test's daemon would keep the mount busy
            process.kill()
        for _ in range(50):
            if subprocess.run(["umount", str(mount_point)], capture_output=True,
                              check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem has not one free block left."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\xff" * size
            while True:
                try:
                    if os.write(fd, chunk) == 0:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    stats = os.statvfs(directory)
    assert stats.f_bavail == 0 and stats.f_bfree == 0, "the filler did not fill the disk"
    return path


@dataclass
class Callbacks:
    """A callback receiver that answers 200 and records what arrived."""

    got: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = request.json()
        self.got.append((str(body.get("id")), request.header("webhook-id"), body))
        return json_response(200, {"ok": True})

    def count(self) -> Counter[str]:
        return Counter(request_id for request_id, _, _ in self.got)


@dataclass
class Hook:
    url: str
    callback_url: str
    client: httpx.AsyncClient

    async def post(self, request_id: str, text: str, *, callback: bool = False,
                   agent: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"message": text, "namespace": request_id, "id": request_id}
        if callback:
            body["callback_url"] = self.callback_url
        if agent is not None:
            body["agent"] = agent
        return await self.client.post(self.url, json=body,
                                      headers={"authorization": f"Bearer {TOKEN}"})


def is_unavailable(response: httpx.Response) -> bool:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return response.status_code == 503 and code == "unavailable"


def show(response: httpx.Response) -> str:
    return f"{response.status_code} {response.text[:300]}"


async def readyz(daemon: DaemonProcess) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(daemon.base_url + "/readyz")).status_code


async def wait_readyz(daemon: DaemonProcess, status: int, timeout: float) -> None:
    with trio.fail_after(timeout):
        while await readyz(daemon) != status:
            await trio.sleep(0.1)


async def test_full_state_dir_refuses_intake_then_recovers(
        full_disk_dir: Path, tmp_path: Path) -> None:
    callbacks = Callbacks()
    router = Router()
    router.add("POST", "/cb", callbacks.handle)
    hook_port = free_port()
    sync_texts: dict[str, str] = {}  # acknowledged synchronous request id -> expected reply
    async_texts: dict[str, str] = {}  # acknowledged asynchronous request id -> expected reply
    sync_replies: dict[str, httpx.Response] = {}

    async with FakeOpenAI() as llm, trio.open_nursery() as nursery, \
            httpx.AsyncClient(timeout=REPLY_TIMEOUT_S + 5) as client:
        host, port = await nursery.start(HTTPServer(router).serve, "127.0.0.1:0")
        hook = Hook(f"http://127.0.0.1:{hook_port}/hook", f"http://{host}:{port}/cb", client)
        config = (f"state_dir: {full_disk_dir}\n"
                  f"providers:\n  llm: {{kind: openai, base_url: '{llm.base_url}', "
                  "model: m, api_key: k, max_retries: 0}\n"
                  "agents:\n  main: {provider: echo}\n  slow: {provider: llm}\n"
                  "default_agent: main\n")
        channel = (f"kind: webhook\nlisten: 127.0.0.1:{hook_port}\n"
                   f"reply_timeout_s: {REPLY_TIMEOUT_S}\nauth:\n  bearer_token: {TOKEN}\n")
        llm.push(echo_step(delay_s=SLOW_S), times=2)
        llm.push(echo_step(), times=20)  # a re-run would get an answer (and be counted)
        daemon = DaemonProcess(tmp_path, extra_config=config)  # logs stay off the tmpfs
        daemon.write_channel("hooks.yaml", channel)
        await daemon.start()
        await daemon.wait_api()
        await wait_readyz(daemon, 200, 10)

        async def sync(request_id: str, text: str, expected: str, *,
                       agent: str | None = None) -> None:
            response = await hook.post(request_id, text, agent=agent)
            sync_replies[request_id] = response
            if response.status_code == 200:
                sync_texts[request_id] = expected

        # -- before: 200s and 202s, callbacks delivered ------------------------------------
        for i in range(3):
            await sync(f"s-pre-{i}", f"before {i}", f"echo: before {i}")
            assert sync_replies[f"s-pre-{i}"].status_code == 200, show(
                sync_replies[f"s-pre-{i}"])
            response = await hook.post(f"a-pre-{i}", f"early {i}", callback=True)
            assert response.status_code == 202, show(response)
            async_texts[f"a-pre-{i}"] = f"echo: early {i}"
        with trio.fail_after(10):
            while not {f"a-pre-{i}" for i in range(3)} <= set(callbacks.count()):
                await trio.sleep(0.05)

        # -- two requests accepted and still running when the disk fills -------------------
        nursery.start_soon(
            lambda: sync("s-slow", "slow sync", "llm: slow sync", agent="slow"))
        response = await hook.post("a-slow", "slow async", callback=True, agent="slow")
        assert response.status_code == 202, show(response)
        async_texts["a-slow"] = "llm: slow async"
        with trio.fail_after(5):
            while len(llm.requests) < 2:
                await trio.sleep(0.01)
        log_offset = len(daemon.stderr())
        filler = fill(full_disk_dir)

        # -- the outage: no acknowledgement, readyz 503, one clear log line, still up ------
        outage = [await hook.post("s-out", "during outage"),
                  await hook.post("a-out", "during outage async", callback=True)]
        async with httpx.AsyncClient(timeout=10) as api:
            outage.append(await api.post(daemon.base_url + "/v1/messages",
                                         json={"message": "api outage", "namespace": "api:out"}))
        assert [is_unavailable(r) for r in outage] == [True] * 3, [show(r) for r in outage]
        problems: list[str] = []  # collected, so that one run reports every broken promise
        with trio.move_on_after(5) as readyz_wait:
            while await readyz(daemon) != 503:
                await trio.sleep(0.1)
        if readyz_wait.cancelled_caught:
            problems.append("GET /readyz stayed 200 while the state store was unwritable")
        assert daemon.process is not None and daemon.process.returncode is None
        assert (await daemon.get("/healthz")) == {"status": "ok"}

        def outage_log() -> str:
            return daemon.stderr()[log_offset:]

        with trio.move_on_after(2):
            while not any(STORE_LINE.search(line) for line in outage_log().splitlines()):
                await trio.sleep(0.05)
        # The slow synchronous request's answer exists now (the model answered after
        # SLOW_S); give it that long to come back while the disk is still full.
        with trio.move_on_after(SLOW_S + 2.5):
            while "s-slow" not in sync_replies:
                await trio.sleep(0.05)
        store_lines = [line for line in outage_log().splitlines() if STORE_LINE.search(line)]
        if not store_lines:
            problems.append("no log line about the state store during the outage:\n"
                            + outage_log()[-3000:])
        if "Traceback" in outage_log():
            problems.append("a traceback in the log during the outage:\n"
                            + outage_log()[-3000:])
        slow_during_outage = sync_replies.get("s-slow")

        # -- space returns: intake recovers by itself ----------------------------------------
        filler.unlink()
        with trio.fail_after(15):
            attempt = 0
            while True:
                attempt += 1
                probe = await hook.post(f"s-rec-{attempt}", f"recovering {attempt}")
                if probe.status_code == 200:
                    sync_texts[f"s-rec-{attempt}"] = f"echo: recovering {attempt}"
                    sync_replies[f"s-rec-{attempt}"] = probe
                    break
                assert is_unavailable(probe), show(probe)
                await trio.sleep(0.2)
        await wait_readyz(daemon, 200, 5)
        await sync("s-post", "after", "echo: after")
        await sync("s-out", "during outage", "echo: during outage")  # the 503'd id, again
        for request_id, text in (("a-post", "after async"), ("a-out", "during outage async")):
            response = await hook.post(request_id, text, callback=True)
            assert response.status_code == 202, show(response)
            async_texts[request_id] = f"echo: {text}"
        async with httpx.AsyncClient(timeout=10) as api:
            again = await api.post(daemon.base_url + "/v1/messages",
                                   json={"message": "api outage", "namespace": "api:out"})
        assert again.status_code == 200, show(again)
        with trio.fail_after(REPLY_TIMEOUT_S + 5):
            while "s-slow" not in sync_replies:
                await trio.sleep(0.05)
        slow_first = sync_replies["s-slow"]
        # The same id again: the stored reply if there was one, else (it was refused) it
        # must now be answered (409 while it still runs: ask again for a while).
        with trio.move_on_after(5):
            while True:
                await sync("s-slow", "slow sync", "llm: slow sync", agent="slow")
                if sync_replies["s-slow"].status_code != 409:
                    break
                await trio.sleep(0.2)
        slow_retry = sync_replies["s-slow"]
        # every callback arrives (checked below; a late duplicate would arrive in the pause)
        with trio.move_on_after(8):
            while not set(async_texts) <= set(callbacks.count()):
                await trio.sleep(0.05)
        await trio.sleep(1.5)
        llm_requests = len(llm.requests)

        # -- a restart on the same state: nothing re-sent, nothing re-run ---------------------
        callbacks_before_restart = len(callbacks.got)
        assert await daemon.stop() == 0
        restarted = DaemonProcess(tmp_path, extra_config=config)
        await restarted.start()
        await restarted.wait_api()
        await wait_readyz(restarted, 200, 10)
        await trio.sleep(2.0)  # a callback re-sent at start would arrive here
        repeats = {request_id: await hook.post(request_id, "repeat")
                   for request_id in {*sync_texts, "s-slow"}}
        sessions = {request_id: await restarted.get(f"/v1/sessions/webhook:hooks:{request_id}")
                    for request_id in [*sync_texts, *async_texts]}
        stderr = daemon.stderr() + restarted.stderr()
        assert await restarted.stop() == 0
        nursery.cancel_scope.cancel()

    for request_id in ("s-post", "s-out"):
        if sync_replies[request_id].status_code != 200:
            problems.append(f"sync {request_id} after the recovery: "
                            f"{show(sync_replies[request_id])}")
    print(f"s-slow: first {show(slow_first)} "
          f"({'while the disk was full' if slow_during_outage else 'after the recovery'}); "
          f"retried with the same id after the recovery: {show(slow_retry)}")
    # Its answer came while the disk was full: never a 2xx that could not be stored
    # (reliability DUR-5), so a 503, and the retry after the recovery gets the answer.
    if slow_first.status_code != 200 and not is_unavailable(slow_first):
        problems.append("the synchronous request in flight when the disk filled got "
                        f"{show(slow_first)}: neither its answer nor 503 unavailable")
    if slow_retry.status_code != 200:
        problems.append("s-slow retried with the same id after the recovery (for 5 s): "
                        f"{show(slow_retry)}; after the restart: {show(repeats['s-slow'])}")
    for request_id, expected in {**sync_texts, "s-slow": "llm: slow sync"}.items():
        reply = sync_replies[request_id].json()
        if reply.get("message") != expected or reply.get("id") != request_id:
            problems.append(f"sync {request_id}: got {reply}, expected {expected!r}")
        repeat = repeats[request_id]
        if repeat.status_code != 200 or repeat.json().get("message") != expected:
            problems.append(f"sync {request_id} repeated after the restart: {show(repeat)}")
    got = callbacks.count()
    for request_id, expected in async_texts.items():
        bodies = [(hook_id, body) for rid, hook_id, body in callbacks.got if rid == request_id]
        if len(bodies) != 1:
            problems.append(f"async {request_id}: {len(bodies)} callbacks (webhook-ids "
                            f"{[h for h, _ in bodies]}), expected exactly one")
        if any(body.get("message") != expected for _, body in bodies):
            problems.append(f"async {request_id}: callback bodies {[b for _, b in bodies]}, "
                            f"expected the message {expected!r}")
        if any(not hook_id for hook_id, _ in bodies):
            problems.append(f"async {request_id}: a callback without webhook-id")
    unexpected = set(got) - set(async_texts)
    if unexpected:
        problems.append(f"callbacks for requests never acknowledged: {sorted(unexpected)}")
    if len(callbacks.got) != callbacks_before_restart:
        problems.append("callbacks arrived after the restart (re-sent, or delivered only "
                        "by the restarted daemon): "
                        f"{[rid for rid, _, _ in callbacks.got[callbacks_before_restart:]]}")
    if len(llm.requests) != llm_requests:
        problems.append("the restarted daemon ran the slow agent again")
    expected_sessions = {**sync_texts, **async_texts}
    for request_id, session in sessions.items():
        entries = [(m.get("role"), m.get("content")) for m in session.get("messages", [])]
        text = expected_sessions[request_id]
        question = text.split(": ", 1)[1]
        if entries != [("user", question), ("assistant", text)]:
            problems.append(f"session webhook:hooks:{request_id}: {entries}")
    if "Traceback" in stderr and not any(p.startswith("a traceback") for p in problems):
        problems.append("a traceback in the logs:\n" + stderr[-3000:])
    print(f"state-store log lines during the outage ({len(store_lines)}):",
          *store_lines[:5], sep="\n  ")
    assert not problems, "\n".join(problems)
