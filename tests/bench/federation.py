"""Federation latency benchmark: a message answered locally versus relayed one hop.

Two ``orrad run`` processes on loopback ports, both with the default ``echo`` provider
(no model latency, so what is measured is orrad's own path):

``alpha``
    One ``kind: webhook`` channel (bearer auth, ``namespace_prefix: bench``) and one
    federation peer, ``beta``, which owns ``bench:remote``.
``beta``
    Owns ``bench:remote``; knows ``alpha`` as a peer (to verify its signatures).

The client sends every request to alpha's webhook, synchronously (the reply is in the
200): requests for ``local:<k>`` are answered by alpha, requests for ``remote:<k>`` are
relayed to beta and answered there. Both kinds are interleaved in one run (request ``i``
is local when ``i`` is even), so they share the same conditions; each worker sends one
request at a time, ``--concurrency`` workers in all. The first ``--warmup`` requests of
each kind are not measured. Every request has a unique id (so orrad really runs it) and
namespaces rotate over ``--namespaces`` keys per kind, so a namespace's lane is rarely
busy with another worker's message.

A request counts when it is a 200 whose ``instance`` is the expected daemon (``alpha``
for local, ``beta`` for relayed); anything else is an error (counted, not measured).

Usage (from the repository root, in the project's venv)::

    python tests/bench/federation.py [--requests 300] [--warmup 30] [--concurrency 4]

One JSON document goes to stdout, logs to stderr::

    {"local": {"count", "errors", "p50_ms", "p99_ms", "mean_ms", "max_ms"},
     "relayed": {...}, "federation_hop_p50_ms": p50(relayed) - p50(local), ...}

The exit status is 1 when the run failed or any request failed. Both daemons are stopped
at the end (SIGTERM, then SIGKILL), also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.cli import add_workdir, report_main
from tests.bench.loadgen import percentile
from tests.bench.webhook import (
    Child,
    _child_env,
    free_port,
    machine_info,
    port_open,
    spawn,
    wait_until,
)

__all__ = ["Options", "main", "run_benchmark"]

log = logging.getLogger("bench.federation")

PREFIX = "bench"
WEBHOOK_PATH = "/hook"


@dataclass(frozen=True)
class Options:
    """Benchmark settings (see ``--help``)."""

    requests: int = 300
    """Measured requests of each kind."""
    warmup: int = 30
    """Unmeasured requests of each kind, sent first."""
    concurrency: int = 4
    namespaces: int = 16
    timeout_s: float = 10.0
    workdir: Path | None = None


@dataclass
class Kind:
    """Latencies and failures of one kind of request (local or relayed)."""

    name: str
    expected_instance: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "count": len(ordered), "errors": self.errors,
            "p50_ms": round(percentile(ordered, 50), 3),
            "p99_ms": round(percentile(ordered, 99), 3),
            "mean_ms": round(statistics.fmean(ordered), 3) if ordered else 0.0,
            "max_ms": round(ordered[-1], 3) if ordered else 0.0,
            **({"error_samples": self.error_samples} if self.error_samples else {}),
        }


# -- daemons -----------------------------------------------------------------------------


@dataclass
class Pair:
    """The two daemons' ports and alpha's webhook token."""

    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    hook_port: int = field(default_factory=free_port)
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (api, fed)

    def __post_init__(self) -> None:
        self.ports = {name: (free_port(), free_port()) for name in ("alpha", "beta")}

    def write(self, workdir: Path) -> dict[str, Path]:
        """Both daemon files (JSON, which is YAML) and alpha's channel; returns the files."""
        files = {}
        for name, other, claims in (("alpha", "beta", [f"{PREFIX}:remote"]),
                                    ("beta", "alpha", [])):
            root = workdir / name
            channels = root / "channels.d"
            channels.mkdir(parents=True)
            api, fed = self.ports[name]
            config = {
                "instance": name,
                "state_dir": str(root / "state"),
                "channels_dir": str(channels),
                "api": {"listen": f"127.0.0.1:{api}"},
                "federation": {
                    "listen": f"127.0.0.1:{fed}", "secret": self.secret,
                    "peers": [{"name": other,
                               "url": f"http://127.0.0.1:{self.ports[other][1]}",
                               "namespaces": claims, "on_unavailable": "fail",
                               "timeout_s": 30}],
                },
            }
            path = root / "orrad.yaml"
            path.write_text(json.dumps(config, indent=2) + "\n")
            files[name] = path
        (workdir / "alpha" / "channels.d" / "hooks.yaml").write_text(json.dumps({
            "kind": "webhook", "listen": f"127.0.0.1:{self.hook_port}", "path": WEBHOOK_PATH,
            "namespace_prefix": PREFIX, "reply_timeout_s": 30,
            "auth": {"bearer_token": self.token},
        }) + "\n")
        return files


def _status_ok(api_port: int, hook: bool) -> bool:
    """The daemon's API answers, and (``hook``) its webhook channel is running."""
    try:
        status = httpx.get(f"http://127.0.0.1:{api_port}/v1/status", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return not hook or any(c.get("state") == "running" for c in status.get("channels", []))


@contextlib.contextmanager
def daemons(pair: Pair, workdir: Path) -> Iterator[dict[str, Child]]:
    """Both daemons running and ready; both stopped on exit (whatever happens)."""
    files = pair.write(workdir)
    with contextlib.ExitStack() as stack:
        children = {
            name: stack.enter_context(spawn(
                name, [sys.executable, "-m", "orrad", "run", "-c", str(path)], workdir,
                _child_env()))
            for name, path in files.items()
        }
        for name, child in children.items():
            api, fed = pair.ports[name]
            wait_until(child, functools.partial(_status_ok, api, name == "alpha"), "API")
            wait_until(child, port_open(fed), "federation listener")
        wait_until(children["alpha"], port_open(pair.hook_port), "webhook port")
        yield children


# -- load ----------------------------------------------------------------------------------


async def _load(pair: Pair, opts: Options, kinds: dict[str, Kind]) -> float:
    """Send the warm-up and measured requests; returns the measured wall time (s)."""
    total = 2 * (opts.warmup + opts.requests)
    todo = iter(range(total))
    url = f"http://127.0.0.1:{pair.hook_port}{WEBHOOK_PATH}"
    headers = {"authorization": f"Bearer {pair.token}"}
    run_id = secrets.token_hex(4)
    measured_from = 2 * opts.warmup
    started: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in todo:  # shared iterator: requests go out in order
            kind = kinds["local" if i % 2 == 0 else "relayed"]
            if i == measured_from:
                started.append(time.perf_counter())
            namespace = f"{'local' if kind.name == 'local' else 'remote'}:" \
                        f"n{(i // 2) % opts.namespaces}"
            body = {"message": f"ping {i}", "namespace": namespace, "id": f"{run_id}-{i}"}
            began = time.perf_counter()
            problem = None
            elapsed_ms = 0.0
            try:
                response = await client.post(url, json=body, headers=headers)
                elapsed_ms = (time.perf_counter() - began) * 1000
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code}: {response.text[:200]}"
                elif response.json().get("instance") != kind.expected_instance:
                    problem = f"answered by {response.json().get('instance')!r}"
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if i < measured_from:
                if problem:
                    log.warning("warm-up request %d (%s): %s", i, kind.name, problem)
                continue
            if problem:
                kind.errors += 1
                if len(kind.error_samples) < 5:
                    kind.error_samples.append(problem)
            else:
                kind.latencies_ms.append(elapsed_ms)

    limits = httpx.Limits(max_connections=opts.concurrency,
                          max_keepalive_connections=opts.concurrency)
    async with httpx.AsyncClient(timeout=opts.timeout_s, limits=limits) as client, \
            trio.open_nursery() as nursery:
        for _ in range(opts.concurrency):
            nursery.start_soon(worker, client)
    return time.perf_counter() - (started[0] if started else time.perf_counter())


def run_benchmark(opts: Options) -> tuple[dict[str, Any], bool]:
    """Start both daemons, load them, stop them; the report and whether all went well."""
    kinds = {"local": Kind("local", "alpha"), "relayed": Kind("relayed", "beta")}
    report: dict[str, Any] = {
        "machine": machine_info(), "requests_per_kind": opts.requests,
        "warmup_per_kind": opts.warmup, "concurrency": opts.concurrency,
        "namespaces_per_kind": opts.namespaces, "provider": "echo",
    }
    exit_codes: dict[str, int | None] = {}
    ok = True
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            workdir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="orrad-bench-fed-")))
        else:
            workdir = opts.workdir.resolve()
            workdir.mkdir(parents=True)
        pair = Pair()
        try:
            with daemons(pair, workdir) as children:
                log.info("sending %d + %d requests of each kind, %d at a time",
                         opts.warmup, opts.requests, opts.concurrency)
                wall_s = trio.run(_load, pair, opts, kinds)
                report["measured_wall_s"] = round(wall_s, 3)
            exit_codes = {name: child.process.returncode for name, child in children.items()}
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            log.error("benchmark failed: %s", exc)
            report["error"] = str(exc)
            ok = False
    local, relayed = kinds["local"].summary(), kinds["relayed"].summary()
    report["local"], report["relayed"] = local, relayed
    report["federation_hop_p50_ms"] = (
        round(relayed["p50_ms"] - local["p50_ms"], 3)
        if local["count"] and relayed["count"] else None)
    report["federation_hop_p99_ms"] = (
        round(relayed["p99_ms"] - local["p99_ms"], 3)
        if local["count"] and relayed["count"] else None)
    report["daemon_exit_codes"] = exit_codes
    if local["errors"] or relayed["errors"] or any(c != 0 for c in exit_codes.values()):
        ok = False
    return report, ok



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON report; 0 when every request succeeded."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="measured requests of each kind (default 300)")
    parser.add_argument("--warmup", type=int, default=30,
                        help="unmeasured requests of each kind, sent first (default 30)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="requests in flight at once (default 4)")
    parser.add_argument("--namespaces", type=int, default=16,
                        help="namespaces per kind the requests rotate over (default 16)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="per-request timeout in seconds (default 10)")
    add_workdir(parser)
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.namespaces) < 1 or args.warmup < 0 \
            or args.timeout <= 0:
        parser.error("requests, concurrency and namespaces must be at least 1, warm-up at "
                     "least 0, timeout positive")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per request
    opts = Options(requests=args.requests, warmup=args.warmup,
                   concurrency=args.concurrency, namespaces=args.namespaces,
                   timeout_s=args.timeout, workdir=args.workdir)
    return report_main(lambda: run_benchmark(opts))


if __name__ == "__main__":
    sys.exit(main())
