"""``prefix`` of ``GET /v1/sessions`` and ``orrad sessions --prefix`` matches whole segments,
case-sensitively (CONTRACT §5): SQLite's LIKE ignores ASCII case, so ``api:case`` once
listed ``api:Case:y`` too. The API and the CLI (which reads the database directly) share
one query; both are checked here against the same stored sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from orrad import Message, Namespace
from orrad.config import load_daemon_config
from orrad.daemon import Daemon
from orrad.runtime.sessions import MemorySessionStore, Session, SessionStore
from orrad.state import Database, SqliteSessionStore

KEYS = ["api:case", "api:case:x", "api:case:x:y", "api:casey", "api:Case:y", "api:CASE",
        "api:case-1", "api:case.z", "api:cas", "api", "other:case"]
EXPECTED = ["api:case", "api:case:x", "api:case:x:y"]


async def _fill(store: SessionStore) -> None:
    for key in KEYS:
        session = Session(key)
        session.push(Message.user("hi"))
        await store.save(session)


async def test_store_prefix_is_case_sensitive_by_whole_segments(tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path / "state"))
    await db.open()
    try:
        for store in (SqliteSessionStore(db), MemorySessionStore()):
            await _fill(store)
            listed = [i.namespace for i in await store.list(Namespace.parse("api:case"))]
            assert sorted(listed) == EXPECTED
            upper = [i.namespace for i in await store.list(Namespace.parse("api:Case"))]
            assert upper == ["api:Case:y"]
    finally:
        await db.close()


async def test_api_and_cli_list_the_same_whole_segment_matches(tmp_path: Path) -> None:
    (tmp_path / "channels.d").mkdir()
    config_path = tmp_path / "orrad.yaml"
    config_path.write_text("instance: alpha\napi:\n  listen: 127.0.0.1:0\n")
    daemon = Daemon(load_daemon_config(str(config_path)), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert daemon.api_address is not None
        host, port = daemon.api_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as api:
            for key in KEYS:
                sent = await api.post("/v1/messages", json={"message": "hi", "namespace": key})
                assert sent.status_code == 200, sent.text
            listed = await api.get("/v1/sessions", params={"prefix": "api:case"})
            assert listed.status_code == 200
            assert [s["namespace"] for s in listed.json()] == EXPECTED
            exact = await api.get("/v1/sessions", params={"prefix": "api:CASE"})
            assert [s["namespace"] for s in exact.json()] == ["api:CASE"]
        daemon.request_stop()

    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ORRAD_", "NOTIFY_"))}
    result = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "orrad", "sessions", "--prefix", "api:case", "--json",
         "-c", str(config_path)], capture_output=True, text=True, timeout=30, env=environ,
        check=False))
    assert result.returncode == 0, result.stderr
    assert [s["namespace"] for s in json.loads(result.stdout)] == EXPECTED


async def test_underscore_in_a_prefix_is_a_character_not_a_pattern(tmp_path: Path) -> None:
    db = Database.in_state_dir(str(tmp_path / "state"))
    await db.open()
    try:
        store = SqliteSessionStore(db)
        await _fill(store)
        assert await store.list(Namespace.parse("api:cas_")) == []
        assert await store.list(Namespace.parse("api:ca_e")) == []
    finally:
        await db.close()
