"""A reload that adds an agent makes it usable from every channel at once (the webhook
channel is not restarted: it sees the live agent set through its context)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.daemon_process import DaemonProcess, free_port

AGENTS_BEFORE = "agents:\n  a: {provider: echo}\n"
AGENTS_AFTER = "agents:\n  a: {provider: echo}\n  b: {provider: echo}\n"


async def test_an_agent_added_by_reload_is_usable_from_webhook_and_api(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, extra_config=AGENTS_BEFORE)
    hook_port = free_port()
    daemon.write_channel("hooks.yaml", f"kind: webhook\nlisten: 127.0.0.1:{hook_port}\n"
                                       "auth:\n  bearer_token: tok\n")
    hook = f"http://127.0.0.1:{hook_port}/hook"
    auth = {"authorization": "Bearer tok"}
    await daemon.start()
    try:
        await daemon.wait_api()
        await daemon.wait_for(lambda states: states.get("hooks", ("", 0))[0] == "running")
        async with httpx.AsyncClient(timeout=10) as client:
            before = await client.post(hook, headers=auth, json={"message": "x", "agent": "b"})
            assert before.status_code == 400
            assert before.json()["error"]["code"] == "unknown_agent"
            api_before = await daemon.post("/v1/messages", {"message": "x", "agent": "b"})
            assert api_before.status_code == 400

            text = daemon.config_path.read_text().replace(AGENTS_BEFORE, AGENTS_AFTER)
            daemon.config_path.write_text(text)
            reload = await daemon.post("/v1/reload")
            assert reload.status_code == 200
            assert [f["result"] for f in reload.json()["files"]] == ["reloaded", "unchanged"]

            after = await client.post(hook, headers=auth, json={"message": "hi", "agent": "b"})
            assert after.status_code == 200, after.text
            assert after.json()["agent"] == "b" and after.json()["message"] == "echo: hi"
            by_metadata = await client.post(hook, headers=auth, json={
                "message": "meta", "metadata": {"agent": "B"}})
            assert by_metadata.status_code == 200 and by_metadata.json()["agent"] == "b"
            api_after = await daemon.post("/v1/messages", {"message": "hey", "agent": "b"})
            assert api_after.status_code == 200 and api_after.json()["agent"] == "b"
        states = await daemon.channel_states()
        assert states["hooks"] == ("running", 1)  # never restarted
    finally:
        assert await daemon.stop() == 0
