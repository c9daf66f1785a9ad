"""The daemon API over real HTTP: auth, messages, sessions, status, metrics, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from orrad.config import load_daemon_config
from orrad.daemon import Daemon


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "channels.d").mkdir()
    (tmp_path / "orrad.yaml").write_text(
        "instance: alpha\napi:\n  listen: 127.0.0.1:0\n  token: s3cret\n"
        "agents:\n  main: {provider: echo}\n  other: {provider: echo}\n")
    daemon = Daemon(load_daemon_config(str(tmp_path / "orrad.yaml")), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert daemon.api_address is not None
        host, port = daemon.api_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}",
                                     headers={"authorization": "Bearer s3cret"}) as client:
            yield client
        daemon.request_stop()


async def test_health_is_open_and_v1_needs_the_token(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz", headers={"authorization": ""})).json() == {"status": "ok"}
    assert (await api.get("/readyz", headers={"authorization": ""})).status_code == 200
    denied = await api.get("/v1/status", headers={"authorization": "Bearer wrong"})
    assert denied.status_code == 401
    assert denied.json()["error"]["code"] == "unauthorized"
    assert "s3cret" not in denied.text
    assert (await api.get("/v1/status")).status_code == 200


async def test_messages_round_trip_and_sessions(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/messages", json={"message": "hi", "namespace": "ops:1",
                                                    "agent": "other"})
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "echo: hi"
    assert (body["namespace"], body["agent"], body["instance"]) == ("ops:1", "other", "alpha")
    assert set(body["usage"]) == {"input_tokens", "output_tokens", "total_tokens"}
    default = (await api.post("/v1/messages", json={"message": "x"})).json()
    assert default["namespace"].startswith("api:") and default["agent"] == "main"

    listing = (await api.get("/v1/sessions", params={"prefix": "ops"})).json()
    assert [(s["namespace"], s["message_count"]) for s in listing] == [("ops:1", 2)]
    detail = (await api.get("/v1/sessions/ops:1")).json()
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
    assert (await api.delete("/v1/sessions/ops:1")).status_code == 200
    assert (await api.get("/v1/sessions/ops:1")).status_code == 404
    assert (await api.delete("/v1/sessions/ops:1")).status_code == 404


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "bad_request"),
    (b'{"message": 5}', 400, "bad_request"),
    (b'{"namespace": "a"}', 400, "bad_request"),
    (b'{"message": "x", "namespace": "../etc"}', 400, "bad_request"),
    (b'{"message": "   "}', 400, "bad_request"),
    (b'{"message": "x", "agent": "ghost"}', 400, "unknown_agent"),
])
async def test_bad_messages_are_json_errors(
    api: httpx.AsyncClient, body: bytes, status: int, code: str
) -> None:
    response = await api.post("/v1/messages", content=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


async def test_unknown_paths_and_methods(api: httpx.AsyncClient) -> None:
    assert (await api.get("/nope")).status_code == 404
    response = await api.put("/v1/status")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    bad_prefix = await api.get("/v1/sessions", params={"prefix": "a::b"})
    assert bad_prefix.status_code == 400


async def test_status_and_metrics(api: httpx.AsyncClient) -> None:
    await api.post("/v1/messages", json={"message": "count me"})
    status = (await api.get("/v1/status")).json()
    assert status["instance"] == "alpha"
    assert {a["name"] for a in status["agents"]} == {"main", "other"}
    assert status["channels"] == [] and status["peers"] == []
    with trio.fail_after(2):  # the reply is out; its delivery is being recorded
        while "orrad_messages_in_flight 0" not in (metrics := (await api.get(
                "/metrics", headers={"authorization": ""})).text):
            await trio.sleep(0.01)
    assert "# TYPE orrad_run_duration_seconds histogram" in metrics
    assert 'orrad_run_duration_seconds_count{agent="main"}' in metrics


async def test_odd_session_paths(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/sessions/a%2Fb")).status_code == 400
    assert (await api.get("/v1/sessions/a:..")).status_code == 400
    assert (await api.get("/v1/sessions/never:seen")).status_code == 404
    head = await api.head("/healthz", headers={"authorization": ""})
    assert head.status_code == 200 and head.content == b""
