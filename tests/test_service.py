"""``orrad run`` as a service: SIGHUP reloads file by file, sd_notify, watchdog, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

from orrad.config import load_daemon_config
from orrad.daemon import Daemon
from orrad.systemd import Notifier
from tests.daemon_process import DaemonProcess

TICKER = "kind: ticker\nlabel: {label}\n"


async def test_sighup_reload_per_file(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("keep.yaml", TICKER.format(label="a"))
    daemon.write_channel("change.yaml", TICKER.format(label="a"))
    daemon.write_channel("drop.yaml", TICKER.format(label="a"))
    daemon.write_channel("broken.yaml", TICKER.format(label="a"))
    daemon.write_channel("ignored.yaml.example", "kind: nonsense\n")
    await daemon.start()
    try:
        await daemon.wait_api()
        await daemon.wait_for(lambda s: len(s) == 4 and all(v[0] == "running" for v in s.values()))

        daemon.write_channel("change.yaml", TICKER.format(label="b"))
        (daemon.channels / "drop.yaml").unlink()
        daemon.write_channel("broken.yaml", "kind: ticker\nlabel: [oops\n")
        daemon.write_channel("new.yaml", TICKER.format(label="n"))
        daemon.write_channel("never.yaml", "kind: ticker\nlabl: x\n")
        daemon.signal(signal.SIGHUP)

        await daemon.wait_for(lambda s: "new" in s and s["change"] == ("running", 2))
        states = await daemon.channel_states()
        assert states["keep"] == ("running", 1)
        assert states["change"] == ("running", 2)
        assert states["broken"] == ("running", 1)  # last good version keeps running
        assert states["new"] == ("running", 1)
        assert states["never"][0] == "rejected"
        assert "drop" not in states
        status = await daemon.get("/v1/status")
        never = next(c for c in status["channels"] if c["name"] == "never")
        assert f"{daemon.channels / 'never.yaml'}:2:1:" in never["last_error"]
        ready = await daemon.post("/readyz")
        assert ready.status_code == 405

        # The same through the API: a second reload changes nothing but reports the files.
        response = await daemon.post("/v1/reload")
        files = {Path(f["file"]).name: f for f in response.json()["files"]}
        assert files["keep.yaml"]["result"] == "unchanged"
        assert files["broken.yaml"]["result"] == "rejected"
        assert "broken.yaml:3:1: invalid YAML" in files["broken.yaml"]["error"]
        async with httpx.AsyncClient() as client:
            readyz = await client.get(daemon.base_url + "/readyz")
        assert readyz.status_code == 503
        # broken.yaml runs its last good version, but its file is rejected: not ready
        assert {c["name"] for c in readyz.json()["channels"]} == {"broken", "never"}
    finally:
        assert await daemon.stop() == 0


async def test_notify_ready_reload_stop(tmp_path: Path) -> None:
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock_path = str(tmp_path / "notify.sock")
    await receiver.bind(sock_path)
    daemon = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": sock_path})
    daemon.write_channel("t.yaml", TICKER.format(label="a"))
    await daemon.start()

    async def next_message() -> dict[str, str]:
        with trio.fail_after(15):
            data = await receiver.recv(4096)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    try:
        first = await next_message()
        assert first.get("READY") == "1", first
        # READY=1 only after the API accepts connections
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=1):
            pass
        assert "channels: 1 running" in first["STATUS"]

        daemon.signal(signal.SIGHUP)
        reloading = await next_message()
        assert reloading["RELOADING"] == "1"
        assert 0 < int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000
        while (message := await next_message()).get("READY") != "1":
            pass

        daemon.signal(signal.SIGTERM)
        while "STOPPING" not in (message := await next_message()):
            pass
        assert message["STOPPING"] == "1"
    finally:
        assert await daemon.stop() == 0
        receiver.close()


async def test_status_follows_a_channel_started_by_a_reload(tmp_path: Path) -> None:
    """STATUS= is sent again when a channel a reload started reaches ``running`` (it used
    to stay at "1 running, 1 starting")."""
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock_path = str(tmp_path / "notify.sock")
    await receiver.bind(sock_path)
    daemon = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": sock_path})
    daemon.write_channel("t.yaml", TICKER.format(label="a"))
    await daemon.start()
    statuses: list[str] = []

    async def wait_status(text: str) -> None:
        with trio.fail_after(15):
            while not any(text in status for status in statuses):
                data = await receiver.recv(4096)
                fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                if "STATUS" in fields:
                    statuses.append(fields["STATUS"])

    try:
        await wait_status("channels: 1 running")
        daemon.write_channel("u.yaml", TICKER.format(label="b"))
        daemon.signal(signal.SIGHUP)
        await wait_status("channels: 2 running")
    finally:
        assert await daemon.stop() == 0
        receiver.close()


async def test_reload_answers_once_a_started_channel_had_its_first_attempt(
        tmp_path: Path) -> None:
    """``orrad reload`` saying "started" means started: a webhook added by it listens by
    then (here a channel whose start takes 2 s is running when the answer comes)."""
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", TICKER.format(label="a"))
    await daemon.start()
    try:
        await daemon.wait_api()
        daemon.write_channel("slow.yaml", "kind: ticker\nlabel: slow\nstart_delay: 2\n")
        response = await daemon.post("/v1/reload")
        assert response.status_code == 200
        assert {"file": str(daemon.channels / "slow.yaml"), "result": "started",
                "error": None} in response.json()["files"]
        states = await daemon.channel_states()
        assert states["slow"][0] == "running", states
    finally:
        assert await daemon.stop() == 0


async def test_watchdog_pings_stop_while_loop_is_blocked(tmp_path: Path) -> None:
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock_path = str(tmp_path / "wd.sock")
    await receiver.bind(sock_path)
    (tmp_path / "orrad.yaml").write_text(f"state_dir: {tmp_path / 'state'}\napi:\n  listen: ''\n")
    config = load_daemon_config(str(tmp_path / "orrad.yaml"))
    notifier = Notifier({"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "100000"})
    daemon = Daemon(config, handle_signals=False, notifier=notifier)
    pings: list[float] = []

    async def collect() -> None:
        while True:
            data = await receiver.recv(4096)
            if b"WATCHDOG=1" in data:
                pings.append(time.monotonic())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        await trio.sleep(0.3)
        healthy = len(pings)
        blocked_at = time.monotonic()
        time.sleep(0.5)  # wedge the event loop: nothing may ping meanwhile
        resumed_at = time.monotonic()
        await trio.sleep(0.3)
        daemon.request_stop()
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    receiver.close()
    assert healthy >= 4  # ~every 50 ms while healthy
    during = [t for t in pings if blocked_at + 0.01 < t < resumed_at - 0.01]
    assert during == []
    assert any(t > resumed_at for t in pings)  # and they resume


def test_notifier_is_a_noop_without_socket_and_ignores_bad_ones() -> None:
    assert not Notifier({}).notify("READY=1")
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1"}).notify("READY=1")
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}).notify("READY=1")
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_s == 1.0
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_s is None


async def test_sigterm_exits_zero_promptly_with_failing_channel(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("bad.yaml",
                         "kind: ticker\nfail_start: true\nrestart:\n  backoff_initial_s: 3600\n"
                         "  backoff_max_s: 3600\n")
    await daemon.start()
    await daemon.wait_api()
    await daemon.wait_for(lambda s: s.get("bad", ("",))[0] == "backoff")
    started = time.monotonic()
    assert await daemon.stop() == 0
    assert time.monotonic() - started < 5


def run_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orrad", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30, check=False)


async def test_status_reload_send_commands(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.write_channel("t.yaml", TICKER.format(label="a"))
    await daemon.start()
    try:
        await daemon.wait_api()
        await daemon.wait_for(lambda s: s.get("t", ("",))[0] == "running")
        status = await trio.to_thread.run_sync(
            lambda: run_cli("status", "--json", config=daemon.config_path))
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["channels"][0]["state"] == "running"
        table = await trio.to_thread.run_sync(lambda: run_cli("status", config=daemon.config_path))
        assert "ticker" in table.stdout and "running" in table.stdout
        sent = await trio.to_thread.run_sync(
            lambda: run_cli("send", "--namespace", "x:1", "ping", config=daemon.config_path))
        assert (sent.returncode, sent.stdout) == (0, "echo: ping\n")
        daemon.write_channel("bad.yaml", "kind: ticker\nlabel: [\n")
        reload = await trio.to_thread.run_sync(lambda: run_cli("reload",
                                                               config=daemon.config_path))
        assert reload.returncode == 78
        assert "rejected" in reload.stdout and "bad.yaml:" in reload.stdout
    finally:
        assert await daemon.stop() == 0
    gone = await trio.to_thread.run_sync(lambda: run_cli("status", config=daemon.config_path))
    assert gone.returncode == 1 and "cannot reach the daemon" in gone.stderr


async def test_second_sigterm_never_kills_the_process(tmp_path: Path) -> None:
    # Regression: a SIGTERM arriving while the daemon already stops (systemd's and the
    # test harness' habit) used to hit Python's default handler and exit with 143.
    for delay in (0.0, 0.002, 0.01, 0.05):
        daemon = DaemonProcess(tmp_path / str(delay))
        daemon.write_channel("t.yaml", TICKER.format(label="a"))
        await daemon.start()
        await daemon.wait_api()
        daemon.signal(signal.SIGTERM)
        await trio.sleep(delay)
        daemon.signal(signal.SIGTERM)
        assert await daemon.stop() == 0, daemon.stderr()
