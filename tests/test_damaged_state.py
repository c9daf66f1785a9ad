"""A damaged or newer state database, from outside (issue 10, item 4).

Before: random bytes over interior pages let the daemon start, and ``GET /v1/sessions/NS``
answered 500 with a logged traceback while the webhook answered 502; a database written by
a newer orrad was used silently. Now ``orrad run`` refuses both with one clear line and
exit 1; damage that appears while running (or that ``quick_check`` cannot see: bytes inside
a record) is a 503 ``unavailable`` plus an error log line on every path, never a 500; the
CLI readers print one line and exit 1.

The databases are written by orrad's own store code and damaged with a fixed-seed RNG
(tests/state/damage.py). SQLite keeps pages it has read in its cache, so after damaging
pages under a running daemon the test writes one row through a connection of its own: like
any change of the file by another connection, that makes the daemon's SQLite drop its page
cache and read the damaged pages from the disk.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from orrad.channels.webhook import WebhookChannel
from orrad.config import load_daemon_config
from orrad.daemon import Daemon
from orrad.federation.signing import Signer
from orrad.state.db import MIGRATIONS
from tests.state.damage import (
    build_state,
    damage_interior,
    namespace,
    overwrite_pages,
    quick_check,
    table_pages,
)

TOKEN = "hook-token"
FED_SECRET = "fed-secret"
UNAVAILABLE = {"error": {"code": "unavailable",
                         "message": "the state store is unavailable; retry later"}}


def orrad(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ORRAD_", "NOTIFY_"))}
    return subprocess.run([sys.executable, "-m", "orrad", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=30, env=environ, check=False)


FEDERATION = f"""federation:
  listen: 127.0.0.1:0
  secret: {FED_SECRET}
  peers:
    - {{name: beta, url: "http://127.0.0.1:9", namespaces: [remote]}}
"""


def write_config(root: Path) -> None:
    (root / "channels.d").mkdir(exist_ok=True)
    (root / "channels.d" / "hooks.yaml").write_text(
        f"kind: webhook\nlisten: 127.0.0.1:0\nreply_timeout_s: 5\n"
        f"auth:\n  bearer_token: {TOKEN}\n")
    (root / "orrad.yaml").write_text("instance: alpha\nstate_dir: state\n"
                                     "api:\n  listen: 127.0.0.1:0\n" + FEDERATION)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- refusing to start -------------------------------------------------------------------------


async def test_run_refuses_a_damaged_database_with_one_line(tmp_path: Path) -> None:
    write_config(tmp_path)
    path = await build_state(tmp_path / "state")
    damage_interior(path)
    result = orrad("run", "-c", str(tmp_path / "orrad.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"orrad: storage error: the state database {path} is damaged "
                           "(quick_check: ")
    assert "restore it from a backup, or move it away" in line


async def test_run_refuses_a_newer_schema_naming_both_versions(tmp_path: Path) -> None:
    write_config(tmp_path)
    path = await build_state(tmp_path / "state", sessions=2)
    newer = len(MIGRATIONS) + 1
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    result = orrad("run", "-c", str(tmp_path / "orrad.yaml"), cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert f"has schema version {newer}, newer than the newest this orrad" in line
    assert f"knows ({len(MIGRATIONS)})" in line
    # The CLI readers refuse it too.
    for args in (["sessions"], ["history", namespace(0)]):
        read = orrad(*args, "-c", str(tmp_path / "orrad.yaml"), cwd=tmp_path)
        assert read.returncode == 1
        assert f"schema version {newer}" in one_line(read.stderr)


@pytest.mark.parametrize("damage", ["pages", "record"])
async def test_cli_readers_print_one_line_and_exit_1(tmp_path: Path, damage: str) -> None:
    write_config(tmp_path)
    path = await build_state(tmp_path / "state")
    if damage == "pages":
        overwrite_pages(path, table_pages(path, "sessions", "session_messages"))
    else:  # bytes inside one message: SQLite cannot see it, the JSON decoder does
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE session_messages SET body = x'7b2272' WHERE namespace = ?",
                         (namespace(4),))
    commands = [["history", namespace(4)], ["history", "--json", namespace(4)]]
    if damage == "pages":
        commands += [["sessions"], ["sessions", "--json"]]
    for args in commands:
        result = orrad(*args, "-c", str(tmp_path / "orrad.yaml"), cwd=tmp_path)
        assert result.returncode == 1, (args, result.stdout)
        line = one_line(result.stderr)
        assert line.startswith(f"orrad: storage error: the state database {path} is damaged"), \
            line


# -- damage while running ----------------------------------------------------------------------


@dataclass
class Running:
    daemon: Daemon
    hook: str
    api: str
    db_path: Path

    async def post_hook(self, ns: str, delivery_id: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(self.hook, json={"message": "hi", "namespace": ns},
                                     headers={"authorization": f"Bearer {TOKEN}",
                                              "webhook-id": delivery_id})

    async def post_api(self, ns: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.post(self.api + "/v1/messages",
                                     json={"message": "hi", "namespace": ns})

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(self.api + path)

    async def get_federation(self, target: str) -> httpx.Response:
        """A signed request from peer ``beta``."""
        assert self.daemon.federation is not None and self.daemon.federation.address
        host, port = self.daemon.federation.address
        headers = Signer("beta", {"alpha": FED_SECRET}).headers("alpha", "GET", target, b"")
        async with httpx.AsyncClient(timeout=10) as client:
            return await client.get(f"http://{host}:{port}{target}", headers=headers)

    def touch(self) -> None:
        """A write by another connection: the daemon's SQLite drops its page cache."""
        with sqlite3.connect(self.db_path, timeout=5) as conn:
            conn.execute("INSERT OR REPLACE INTO kv (scope, key, value) "
                         "VALUES ('test', 'touch', x'31')")


@asynccontextmanager
async def running(root: Path, db_path: Path) -> AsyncIterator[Running]:
    write_config(root)
    assert quick_check(db_path) == "ok"
    daemon = Daemon(load_daemon_config(str(root / "orrad.yaml")), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert daemon.manager is not None and daemon.api_address is not None
        [runner] = daemon.manager.runners.values()
        assert isinstance(runner.channel, WebhookChannel) and runner.channel.address
        host, port = runner.channel.address
        api_host, api_port = daemon.api_address
        yield Running(daemon, f"http://{host}:{port}/hook",
                      f"http://{api_host}:{api_port}", db_path)
        daemon.request_stop()


def damage_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR and "is damaged" in r.getMessage()]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    crashed = [r.getMessage() for r in caplog.records if r.exc_info]
    assert crashed == []


async def test_an_unreadable_session_record_is_503_on_every_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes damaged inside a stored message: quick_check passes, so the daemon starts.
    (Before: GET 500 with a traceback, the webhook 502 ``internal``.)"""
    path = await build_state(tmp_path / "state")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE session_messages SET body = x'7b22726f6c65' "
                     "WHERE namespace = ? AND seq = 3", (namespace(7),))
    async with running(tmp_path, path) as d:
        damaged = namespace(7).removeprefix("webhook:hooks:")
        get = await d.get(f"/v1/sessions/{namespace(7)}")
        assert (get.status_code, get.json()) == (503, UNAVAILABLE)
        hook = await d.post_hook(damaged, "r1")
        assert hook.status_code == 503
        assert hook.json()["error"]["code"] == "unavailable"
        api = await d.post_api(namespace(7))
        assert api.status_code == 503
        assert api.json()["error"]["code"] == "unavailable"
        # Everything else still works.
        assert (await d.get(f"/v1/sessions/{namespace(8)}")).status_code == 200
        assert (await d.post_hook("s008", "r2")).status_code == 200
        assert (await d.get("/v1/sessions")).status_code == 200
    assert damage_logged(caplog)
    no_tracebacks(caplog)


async def test_session_pages_damaged_while_running_are_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = await build_state(tmp_path / "state")
    pages = table_pages(path, "sessions", "session_messages")
    async with running(tmp_path, path) as d:
        overwrite_pages(path, pages)
        d.touch()
        for target in ("/v1/sessions", f"/v1/sessions/{namespace(3)}"):
            response = await d.get(target)
            assert (response.status_code, response.json()) == (503, UNAVAILABLE), target
        async with httpx.AsyncClient(timeout=10) as client:
            delete = await client.delete(f"{d.api}/v1/sessions/{namespace(3)}")
        assert (delete.status_code, delete.json()) == (503, UNAVAILABLE)
        # A peer reading this daemon's sessions gets the same answer.
        for target in ("/federation/v1/sessions?prefix=webhook",
                       f"/federation/v1/sessions/detail?namespace={namespace(3)}"):
            response = await d.get_federation(target)
            assert (response.status_code, response.json()) == (503, UNAVAILABLE), target
        hook = await d.post_hook("s003", "r1")
        assert hook.status_code == 503, hook.text
        assert hook.json()["error"]["code"] == "unavailable"
        assert (await d.get("/healthz")).status_code == 200
    assert damage_logged(caplog)
    no_tracebacks(caplog)


async def test_ledger_pages_damaged_while_running_refuse_intake_with_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pipeline's ledger writes go through the router's 'store broken' path: intake
    answers 503, /readyz names the state store, the error is logged; nothing crashes."""
    path = await build_state(tmp_path / "state", sessions=2, ledger_entries=400)
    pages = table_pages(path, "ledger")
    async with running(tmp_path, path) as d:
        overwrite_pages(path, pages)
        d.touch()
        hook = await d.post_hook("s001", "new-1")
        assert hook.status_code == 503, hook.text
        assert hook.json()["error"]["code"] == "unavailable"
        api = await d.post_api("ops:1")
        assert (api.status_code, api.json()) == (503, UNAVAILABLE)
        ready = await d.get("/readyz")
        assert ready.status_code == 503
        [store] = [c for c in ready.json()["channels"] if c["name"] == "state store"]
        assert "is damaged" in store["last_error"]
    assert damage_logged(caplog)
    no_tracebacks(caplog)
