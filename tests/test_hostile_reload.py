"""Reloads that cannot finish (issue 10 item 2, inside the daemon): a stop request is
honoured at once during one, a file whose load never returns is rejected alone after its
budget, and a plugin whose checks blow up costs only its own file.

The stand-in for "a read that never returns" is a real plugin kind whose ``problems()``
blocks in its worker thread until the test releases it (as a read from a hung network file
system would); it tells the test, through trio, when it has started blocking.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

import trio

from orrad import BaseChannel, OutboundError, OutboundMessage
from orrad.channels.registry import ChannelRegistry
from orrad.config import ChannelConfig, DaemonConfig, Problem, load_daemon_config
from orrad.config.yamlpos import Limits
from orrad.daemon import LOAD_MARGIN_S, Daemon
from orrad.errors import DaemonStopping
from orrad.supervisor import ChannelState


class Gate:
    """Where a blocking check waits; ``entered`` is set (in trio) once it waits."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.release = threading.Event()


class StuckConfig(ChannelConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: str = "ok"  # ok | block | raise
    gates: ClassVar[list[Gate]] = []

    def problems(self, daemon: DaemonConfig) -> list[Problem]:
        if self.mode == "block":
            gate = self.gates[-1]
            trio.from_thread.run_sync(gate.entered.set)
            gate.release.wait(30)  # bounded, so an abandoned thread ends with the test
        if self.mode == "raise":
            raise RuntimeError("plugin bug")
        return super().problems(daemon)


class StuckChannel(BaseChannel):
    kind: ClassVar[str] = "stuck"
    config_type: ClassVar[type[ChannelConfig]] = StuckConfig

    async def send(self, response: OutboundMessage) -> None:
        pass

    async def send_error(self, error: OutboundError) -> None:
        pass


def make_daemon(tmp_path: Path, files: dict[str, str], limits: Limits) -> tuple[Daemon, Gate]:
    channels = tmp_path / "channels.d"
    channels.mkdir()
    for name, text in files.items():
        (channels / name).write_text(text)
    (tmp_path / "orrad.yaml").write_text(f"state_dir: {tmp_path / 'state'}\napi:\n  listen: ''\n")
    registry = ChannelRegistry()
    registry.register(StuckChannel)
    gate = Gate()
    StuckConfig.gates.append(gate)
    daemon = Daemon(load_daemon_config(str(tmp_path / "orrad.yaml")), registry=registry,
                    handle_signals=False, config_limits=limits)
    return daemon, gate


def states(daemon: Daemon) -> dict[str, ChannelState]:
    return {Path(s.file).name: s.state for s in daemon.channel_statuses()}


async def test_a_stop_request_is_honoured_during_a_wedged_reload(tmp_path: Path) -> None:
    daemon, gate = make_daemon(tmp_path, {"ok.yaml": "kind: stuck\n"}, Limits(time_s=60))
    stopped, reloaded = trio.Event(), trio.Event()
    outcome: list[str] = []

    async def run() -> None:
        await daemon.run()
        stopped.set()

    async def reload() -> None:
        try:
            await daemon.reload()
        except DaemonStopping:
            outcome.append("stopping")
        reloaded.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await daemon.ready.wait()
            (tmp_path / "channels.d" / "wedge.yaml").write_text("kind: stuck\nmode: block\n")
            nursery.start_soon(reload)
            await gate.entered.wait()  # the reload is stuck in the file's checks
            daemon.request_stop()
            with trio.fail_after(5):  # far below the file's 60 s budget
                await reloaded.wait()
                await stopped.wait()
    finally:
        gate.release.set()
    assert outcome == ["stopping"]


async def test_a_load_that_never_returns_rejects_that_file_only(tmp_path: Path) -> None:
    limits = Limits(time_s=0.1)
    daemon, gate = make_daemon(tmp_path, {"a.yaml": "kind: stuck\n",
                                          "wedge.yaml": "kind: stuck\nmode: block\n",
                                          "z.yaml": "kind: stuck\n"}, limits)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.run)
            with trio.fail_after(limits.time_s + LOAD_MARGIN_S + 5):
                await daemon.ready.wait()
            assert states(daemon) == {"a.yaml": ChannelState.RUNNING,
                                      "wedge.yaml": ChannelState.REJECTED,
                                      "z.yaml": ChannelState.RUNNING}
            [wedge] = [s for s in daemon.channel_statuses() if s.state is ChannelState.REJECTED]
            assert wedge.last_error == (f"{tmp_path / 'channels.d' / 'wedge.yaml'}: not read "
                                        f"within {limits.time_s + LOAD_MARGIN_S:g}s "
                                        "(a read that blocks?)")
            daemon.request_stop()
    finally:
        gate.release.set()


async def test_a_plugin_check_that_raises_rejects_its_file_only(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path, {"a.yaml": "kind: stuck\n",
                                       "bug.yaml": "kind: stuck\nmode: raise\n"}, Limits())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert states(daemon) == {"a.yaml": ChannelState.RUNNING,
                                  "bug.yaml": ChannelState.REJECTED}
        results = {Path(r.file).name: (r.result, r.error) for r in await daemon.reload()}
        assert results["a.yaml"] == ("unchanged", None)
        assert results["bug.yaml"] == (
            "rejected", f"{tmp_path / 'channels.d' / 'bug.yaml'}: cannot load the file: "
                        "RuntimeError raised while checking it")
        daemon.request_stop()


async def test_a_rejected_file_that_is_deleted_is_reported_removed(tmp_path: Path) -> None:
    daemon, _ = make_daemon(tmp_path, {"a.yaml": "kind: stuck\n", "bad.yaml": "kind: [\n"},
                            Limits())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()
        assert states(daemon)["bad.yaml"] is ChannelState.REJECTED
        (tmp_path / "channels.d" / "bad.yaml").unlink()
        results = {Path(r.file).name: r.result for r in await daemon.reload()}
        assert results == {"orrad.yaml": "unchanged", "a.yaml": "unchanged", "bad.yaml": "removed"}
        assert "bad.yaml" not in states(daemon)
        assert daemon.not_ready() == []
        # Gone for good: the next reload does not mention it.
        assert {Path(r.file).name for r in await daemon.reload()} == {"orrad.yaml", "a.yaml"}
        daemon.request_stop()
