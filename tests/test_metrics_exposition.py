"""``GET /metrics`` of a real daemon, parsed whole with prometheus_client's own parser.

Bug 5: a rejected channel file whose name holds a quote, a backslash or a newline broke
the hand-written exposition; the library escapes label values, so every name round-trips.
Also: the metric catalogue (names, types, labels), the scrape-time states, and that every
daemon (and every part built without one) has its own registry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import prometheus_client
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from orrad.channels.base import Channel, ChannelContext
from orrad.channels.webhook import WebhookChannel
from orrad.config import ChannelConfig, load_daemon_config
from orrad.daemon import Daemon
from orrad.metrics import Metrics
from orrad.model import Message, Namespace
from orrad.router import AgentSet, Router
from orrad.runtime.loop import Runtime
from orrad.runtime.providers.echo import EchoProvider
from orrad.runtime.sessions import MemorySessionStore
from orrad.supervisor import ChannelManager

ODD_NAMES = ['x"y', "back\\slash", "new\nline", 'all\\"\n"\\']

# Every metric orrad exposes (CONTRACT §5, README "Daemon API"): name -> (type, labels).
CATALOGUE = {
    "orrad_messages_received": ("counter", {"channel"}),
    "orrad_replies_sent": ("counter", {"channel", "outcome"}),
    "orrad_reply_delivery_failures": ("counter", {"channel"}),
    "orrad_run_errors": ("counter", {"code"}),
    "orrad_channel_restarts": ("counter", {"channel"}),
    "orrad_run_duration_seconds": ("histogram", {"agent"}),
    "orrad_provider_request_duration_seconds": ("histogram", {"provider"}),
    "orrad_provider_tokens": ("counter", {"provider", "direction"}),
    "orrad_provider_errors": ("counter", {"provider"}),
    "orrad_webhook_callback_failures": ("counter", {"channel"}),
    "orrad_federation_relays": ("counter", {"peer", "outcome"}),
    "orrad_federation_received": ("counter", {"origin"}),
    "orrad_channel_up": ("gauge", {"channel", "state"}),
    "orrad_messages_in_flight": ("gauge", set()),
    "orrad_peer_up": ("gauge", {"peer"}),
    "orrad_federation_queue_depth": ("gauge", {"peer"}),
}


@dataclass
class Running:
    daemon: Daemon
    api: httpx.AsyncClient
    channels: Path

    async def scrape(self) -> dict[str, Metric]:
        """``/metrics``, parsed whole (a malformed line anywhere raises)."""
        response = await self.api.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE_LATEST
        families = list(text_string_to_metric_families(response.text))
        names = [f.name for f in families]
        assert len(names) == len(set(names)), names
        return {f.name: f for f in families}


@asynccontextmanager
async def running(tmp_path: Path, files: dict[str, str], extra: str = "",
                  ) -> AsyncIterator[Running]:
    channels = tmp_path / "channels.d"
    channels.mkdir(parents=True)
    for name, text in files.items():
        (channels / name).write_text(text)
    (tmp_path / "orrad.yaml").write_text(
        f"instance: alpha\napi:\n  listen: 127.0.0.1:0\nagents:\n  main: {{provider: echo}}\n"
        f"{extra}")
    daemon = Daemon(load_daemon_config(str(tmp_path / "orrad.yaml")), handle_signals=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon.run)
        await daemon.ready.wait()  # the channel files are judged before ready
        assert daemon.api_address is not None
        host, port = daemon.api_address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as api:
            yield Running(daemon, api, channels)
        daemon.request_stop()


def samples(family: Metric, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples
            if s.name == family.name + suffix}


async def test_odd_rejected_channel_names_round_trip_through_the_exposition(
    tmp_path: Path,
) -> None:
    files = {f"{name}.yaml": "kind: webhook\nlisten: 127.0.0.1:0\n" for name in ODD_NAMES}
    files["hooks.yaml"] = "kind: webhook\nlisten: 127.0.0.1:0\n"
    async with running(tmp_path, files) as node:
        families = await node.scrape()
    assert samples(families["orrad_channel_up"]) == {
        **{(("channel", name), ("state", "rejected")): 0.0 for name in ODD_NAMES},
        (("channel", "hooks"), ("state", "running")): 1.0,
    }


async def test_every_metric_is_exposed_with_its_type_and_labels(tmp_path: Path) -> None:
    federation = ("federation:\n  listen: 127.0.0.1:0\n  secret: s3cret\n  peers:\n"
                  "    - name: beta\n      url: http://127.0.0.1:9\n      namespaces: [ops]\n")
    hook = "kind: webhook\nlisten: 127.0.0.1:0\nagent: main\n"
    async with running(tmp_path, {"hooks.yaml": hook}, federation) as node:
        assert node.daemon.manager is not None
        [runner] = node.daemon.manager.runners.values()
        assert isinstance(runner.channel, WebhookChannel) and runner.channel.address
        host, port = runner.channel.address
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://{host}:{port}/hook",
                                       json={"message": "hi", "namespace": "n"})
        assert answer.status_code == 200 and answer.json()["message"] == "echo: hi"
        families = await node.scrape()
    # prometheus_client adds a ``<name>_created`` gauge (the series' start time) beside
    # each labelled counter and histogram series.
    created = {name for name in families if name.endswith("_created")}
    assert created == {f"{name}_created" for name in ("orrad_messages_received",
                                                       "orrad_replies_sent",
                                                       "orrad_run_duration_seconds",
                                                       "orrad_provider_request_duration_seconds",
                                                       "orrad_provider_tokens")}
    assert {name: f.type for name, f in families.items()
            if name.startswith("orrad_") and name not in created} == {
        name: kind for name, (kind, _) in CATALOGUE.items()}
    for name, (_, labels) in CATALOGUE.items():
        for sample in families[name].samples:
            if sample.name in (name, f"{name}_total", f"{name}_count", f"{name}_sum"):
                assert set(sample.labels) == labels, sample
    assert samples(families["orrad_messages_received"], "_total") == {
        (("channel", "hooks"),): 1.0}
    assert samples(families["orrad_run_duration_seconds"], "_count") == {
        (("agent", "main"),): 1.0}
    tokens = samples(families["orrad_provider_tokens"], "_total")
    assert set(tokens) == {(("direction", d), ("provider", "echo")) for d in ("input", "output")}
    assert samples(families["orrad_peer_up"]).keys() == {(("peer", "beta"),)}
    assert samples(families["orrad_federation_queue_depth"]) == {(("peer", "beta"),): 0.0}
    assert list(samples(families["orrad_messages_in_flight"]).values()) in ([0.0], [1.0])


async def test_states_are_read_at_scrape_time(tmp_path: Path) -> None:
    async with running(tmp_path, {'x"y.yaml': "kind: nope\n"}) as node:
        before = await node.scrape()
        (node.channels / 'x"y.yaml').unlink()
        (node.channels / "hooks.yaml").write_text("kind: webhook\nlisten: 127.0.0.1:0\n")
        await node.daemon.reload()
        assert node.daemon.manager is not None
        await node.daemon.manager.wait_first_attempts()
        after = await node.scrape()
    assert samples(before["orrad_channel_up"]) == {
        (("channel", 'x"y'), ("state", "rejected")): 0.0}
    assert samples(after["orrad_channel_up"]) == {
        (("channel", "hooks"), ("state", "running")): 1.0}


async def test_two_daemons_never_share_counts(tmp_path: Path) -> None:
    async with running(tmp_path / "a", {}) as a, running(tmp_path / "b", {}) as b:
        assert a.daemon.metrics is not b.daemon.metrics
        assert (await a.api.post("/v1/messages", json={"message": "hi"})).status_code == 200
        count = "orrad_run_duration_seconds_count"
        assert a.daemon.metrics.value(count, agent="main") == 1
        assert b.daemon.metrics.value(count, agent="main") == 0
        # The daemon's runtimes count into its registry, not into private ones.
        runtime = a.daemon.require_router().agents.resolve("main")
        assert runtime.metrics is a.daemon.metrics


def _no_channel(config: ChannelConfig, context: ChannelContext) -> Channel:
    raise AssertionError("no channel is started here")


async def test_parts_built_without_metrics_get_private_ones() -> None:
    daemon = load_daemon_config(None, environ={})
    runtimes = [Runtime(EchoProvider(), MemorySessionStore()) for _ in range(2)]
    routers = [Router(AgentSet({"default": rt}, "default")) for rt in runtimes]
    managers = [ChannelManager(r.intake, _no_channel,
                               lambda c: ChannelContext(c.name or "?", daemon))
                for r in routers]
    contexts = [ChannelContext("c", daemon) for _ in range(2)]
    owned: list[Metrics] = [*(r.metrics for r in runtimes), *(r.metrics for r in routers),
                            *(m.metrics for m in managers), *(c.metrics for c in contexts)]
    assert len({id(m) for m in owned}) == len(owned)
    await runtimes[0].run(Namespace.parse("t:1"), Message.user("hello"))
    tokens = "orrad_provider_tokens_total"
    assert runtimes[0].metrics.value(tokens, provider="echo", direction="input") > 0
    assert runtimes[1].metrics.value(tokens, provider="echo", direction="input") == 0
    # Nothing lands in prometheus_client's process-wide default registry.
    default = prometheus_client.REGISTRY
    assert not [m.name for m in default.collect() if m.name.startswith("orrad_")]
    assert Metrics().registry is not default
