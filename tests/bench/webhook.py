"""Webhook throughput benchmark: orrad's webhook channel against a bare trio + h11 server.

One run measures three scenarios, one after the other, each server in its own process and
loaded in another (so the load generator never shares an event loop or a GIL with the
server it measures): by ``wrk`` when it is installed (:mod:`tests.bench.wrk`; the Python
generator saturates near 4,000–6,000 req/s and would hide the ceiling), else by
:mod:`tests.bench.loadgen` (``--loadgen python`` forces it):

``bare_h11``
    A JSON echo endpoint written on trio + h11 alone (:mod:`tests.bench.servers`): the
    ceiling any trio + h11 server can reach on this machine.
``orrad_webhook_echo``
    ``orrad run`` with one ``kind: webhook`` channel (bearer auth), the default ``echo``
    provider and the SQLite store in a temporary ``state_dir``, at the same concurrency.
    Every request has a unique ``id``, so orrad claims it in its inbox, runs the agent,
    stores the session and the reply every time; requests are spread over 64 namespaces.
``orrad_webhook_echo_wide``
    The echo daemon again at the OpenAI scenario's concurrency and namespaces (256, with
    ``routing.max_concurrency: 256``): orrad's own ceiling at that width, without a provider
    call (``--no-echo-wide`` skips it).
``orrad_webhook_openai_100ms``
    The same channel with an ``openai`` provider pointing at a fake OpenAI server that
    answers after 100 ms, ``routing.max_concurrency: 256``, 256 concurrent clients over 256
    namespaces. The ideal is 256 / 0.1 s = 2560 requests/s; ``ratio_to_ideal`` says how much
    of it orrad reaches.

The ratios of issue 12 come out of the same run: ``ratio_orrad_to_bare`` (echo ÷ bare
req/s, both at ``--concurrency``), ``p99_ratio_orrad_to_bare`` (echo p99 ÷ bare p99) and
``slow_provider_ratio`` (OpenAI req/s ÷ min(ideal, ``orrad_webhook_echo_wide`` req/s); with
``--no-echo-wide``, ÷ the ideal).

Usage (from the repository root, in the project's venv)::

    python tests/bench/webhook.py [--duration 10] [--warmup 2] [--concurrency 32]
                                  [--openai-concurrency 256] [--openai-delay 0.1]

To benchmark another orrad tree (say the last commit, exported with
``git archive HEAD orrad | tar -x -C /tmp/head``), put it first on the path:
``PYTHONPATH=/tmp/head python tests/bench/webhook.py``.

One JSON document goes to stdout, logs to stderr. ``rps`` counts 200 responses completed
inside the measured window; ``p50_ms``/``p99_ms`` are their latencies; ``errors`` counts
non-200 answers, connection failures and timeouts in the window. The exit status is 1 when
a scenario could not run (its entry then holds ``"error"``). Every subprocess is stopped
at the end, also on errors and Ctrl-C.

Note: on a small machine the load generator, orrad and the fake LLM compete for the same
cores; ``machine.cpus`` is reported so figures can be read in that light.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import logging
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import loadgen, wrk
from tests.bench.cli import add_workdir, report_main

__all__ = ["Options", "main", "orrad_daemon", "post_each", "run_benchmark"]

log = logging.getLogger("bench.webhook")

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
LOADGEN_SLACK_S = 60.0
WEBHOOK_PATH = "/hook"
ECHO_NAMESPACES = 64
IDEAL_DELAY_S = 0.1
LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class Options:
    """Benchmark settings (see ``--help``)."""

    duration_s: float = 10.0
    warmup_s: float = 2.0
    concurrency: int = 32
    openai_concurrency: int = 256
    openai_delay_s: float = IDEAL_DELAY_S
    timeout_s: float = 10.0
    loadgen: str = "auto"
    """``wrk``, ``python`` (:mod:`tests.bench.loadgen`) or ``auto`` (wrk when installed)."""
    echo_wide: bool = True
    """Also run the echo daemon at the OpenAI scenario's width (``orrad_webhook_echo_wide``)."""
    workdir: Path | None = None
    """Keep configs, state and logs here (default: a temporary folder, removed afterwards)."""


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_env(**extra: str) -> dict[str, str]:
    """The environment for children: no orrad/systemd variables; the repo importable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ORRAD_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))}
    # An inherited PYTHONPATH goes first: ``PYTHONPATH=/other/checkout`` benchmarks the
    # orrad found there (it must not contain a ``tests`` package of its own).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)
    env.update(extra)
    return env


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL if the benchmark dies (Linux only)."""
    if _LIBC is not None and sys.platform == "linux":
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    """A subprocess whose stderr goes to a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self) -> str:
        """The end of the child's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL; returns the exit status."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %gs: killing it", self.name, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
        return proc.returncode


@contextlib.contextmanager
def spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> Iterator[Child]:
    """Start ``argv`` (stdout discarded, stderr to ``workdir/<name>.log``); always stop it."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
            env=env, cwd=workdir, preexec_fn=_die_with_parent,
        )
    child = Child(name, process, log_path)
    log.info("started %s (pid %d)", name, process.pid)
    try:
        yield child
    finally:
        code = child.stop()
        log.info("%s exited with %s", name, code)


def wait_until(child: Child, ready: Callable[[], bool], what: str,
               timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``ready()`` every 50 ms for at most ``timeout_s``; fail early if ``child`` dies."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode} before "
                               f"{what}; its log ends with:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name}: no {what} within {timeout_s:g}s; its log ends "
                               f"with:\n{child.tail()}")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), from ``/proc``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based, proc(5))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def port_open(port: int) -> Callable[[], bool]:
    """A readiness probe: does 127.0.0.1:``port`` accept a TCP connection?"""
    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            return False
    return probe


# -- load --------------------------------------------------------------------------------


def use_wrk(opts: Options) -> bool:
    """Whether this run loads with wrk (see :attr:`Options.loadgen`)."""
    if opts.loadgen == "wrk" and not wrk.available():
        raise RuntimeError("--loadgen wrk: no wrk on PATH (apt-get install wrk)")
    return opts.loadgen == "wrk" or (opts.loadgen == "auto" and wrk.available())


def _python_load(port: int, opts: Options, *, concurrency: int, namespaces: int, path: str,
                 token: str | None, tag: str) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "tests.bench.loadgen", "--port", str(port), "--path", path,
        "--concurrency", str(concurrency), "--namespaces", str(namespaces),
        "--warmup", str(opts.warmup_s), "--duration", str(opts.duration_s),
        "--timeout", str(opts.timeout_s), "--tag", tag,
    ]
    env = _child_env(BENCH_TOKEN=token or "")
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, cwd=REPO,
        timeout=opts.warmup_s + opts.duration_s + LOADGEN_SLACK_S, check=False,
        preexec_fn=_die_with_parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator exited with {done.returncode}")
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["loadgen"] = "python"
    return summary


def load(port: int, opts: Options, *, concurrency: int, namespaces: int, path: str,
         token: str | None = None, tag: str, servers: tuple[Child, ...] = ()
         ) -> dict[str, Any]:
    """Load ``port`` with wrk or :mod:`tests.bench.loadgen` in its own process; its summary.

    ``servers`` are the processes under load: how many cores each kept busy during the run
    (warm-up included) goes to ``cpu_cores[name]`` (1.0 = one core saturated), next to the
    load generator's own.
    """
    before = {c.name: cpu_seconds(c.process.pid) for c in servers}
    started = time.monotonic()
    log.info("loading port %d: %d connections for %gs (+%gs warm-up)", port, concurrency,
             opts.duration_s, opts.warmup_s)
    if use_wrk(opts):
        summary = wrk.run(port, path, concurrency=concurrency, namespaces=namespaces,
                          warmup_s=opts.warmup_s, duration_s=opts.duration_s,
                          timeout_s=opts.timeout_s, token=token, tag=tag)
    else:
        summary = _python_load(port, opts, concurrency=concurrency, namespaces=namespaces,
                               path=path, token=token, tag=tag)
    elapsed = time.monotonic() - started
    cores: dict[str, float | None] = {"loadgen": summary.pop("cpu_cores_loadgen", None)}
    for child in servers:
        first, last = before[child.name], cpu_seconds(child.process.pid)
        if first is not None and last is not None:
            cores[child.name] = round((last - first) / elapsed, 2)
    summary["cpu_cores"] = cores
    log.info("-> %.1f req/s, p50 %.2f ms, p99 %.2f ms, %d errors", summary["rps"],
             summary["p50_ms"], summary["p99_ms"], summary["errors"])
    return summary


async def post_each(port: int, token: str, namespaces: Sequence[str], *, tag: str,
                    concurrency: int = 8, timeout_s: float = 10.0) -> int:
    """POST one webhook message per entry of ``namespaces`` (in order, ``concurrency``
    keep-alive connections, each message with a unique id) and wait for every answer; how
    many were not a 200 with the message's id.

    Unlike :func:`load` this sends an exact number of requests: for creating a daemon's
    sessions through its webhook, or giving each session its first (unmeasured) turn. The
    client is :func:`tests.bench.loadgen.exchange` (h11 on trio, far lighter than httpx).
    """
    headers = [("host", f"127.0.0.1:{port}"), ("content-type", "application/json"),
               ("authorization", f"Bearer {token}")]
    todo = iter(enumerate(namespaces))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        stream: trio.SocketStream | None = None
        conn = h11.Connection(h11.CLIENT)
        try:
            for i, namespace in todo:  # shared iterator: requests go out in order
                request_id = f"{tag}-{i}"
                body = json.dumps({"message": f"{tag} {i}", "namespace": namespace,
                                   "id": request_id}).encode()
                try:
                    with trio.fail_after(timeout_s):
                        if stream is None:
                            stream = await trio.open_tcp_stream("127.0.0.1", port)
                            conn = h11.Connection(h11.CLIENT)
                        status, answer = await loadgen.exchange(
                            stream, conn, WEBHOOK_PATH, headers, body)
                except (OSError, trio.BrokenResourceError, trio.TooSlowError,
                        h11.ProtocolError, loadgen.ExchangeError) as exc:
                    failures += 1
                    log.debug("%s request %d failed: %r", tag, i, exc)
                    if stream is not None:
                        await trio.aclose_forcefully(stream)
                    stream = None
                    continue
                if status != 200 or request_id.encode() not in answer:
                    failures += 1
                    log.debug("%s request %d: HTTP %d %r", tag, i, status, answer[:200])
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    await trio.aclose_forcefully(stream)
                    stream = None
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, len(namespaces)))):
            nursery.start_soon(worker)
    return failures


# -- scenarios -----------------------------------------------------------------------------


def bench_bare(opts: Options, workdir: Path) -> dict[str, Any]:
    """(a) the bare trio + h11 echo server."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.servers", "bare", "--port", str(port)]
    with spawn("bare_h11", argv, workdir, _child_env()) as child:
        wait_until(child, port_open(port), "listening port")
        result = load(port, opts, concurrency=opts.concurrency, namespaces=ECHO_NAMESPACES,
                      path=WEBHOOK_PATH, tag="bare", servers=(child,))
    return {**result, "concurrency": opts.concurrency}


def _write_orrad(root: Path, port: int, token: str, daemon_extra: str) -> Path:
    """``root/orrad.yaml`` and ``root/channels.d/hooks.yaml``; returns the daemon file."""
    channels = root / "channels.d"
    channels.mkdir(parents=True)
    (channels / "hooks.yaml").write_text(
        "kind: webhook\n"
        f"listen: 127.0.0.1:{port}\n"
        f"path: {WEBHOOK_PATH}\n"
        "auth:\n"
        f"  bearer_token: {token}\n"
    )
    config = root / "orrad.yaml"
    config.write_text(
        "instance: bench\n"
        f"state_dir: {root / 'state'}\n"
        f"channels_dir: {channels}\n"
        "api:\n"
        "  listen: ''\n"
        + daemon_extra
    )
    return config


@dataclass
class Daemon:
    """A running ``orrad run``: its webhook port and bearer token; its exit status later."""

    port: int
    token: str
    child: Child | None = None
    exit_code: int | None = None

    @property
    def processes(self) -> tuple[Child, ...]:
        """The daemon's process, for CPU accounting."""
        return (self.child,) if self.child is not None else ()


@contextlib.contextmanager
def orrad_daemon(name: str, workdir: Path, daemon_extra: str = "",
                 before_start: Callable[[Path], None] | None = None) -> Iterator[Daemon]:
    """A real ``orrad run`` with one webhook channel, stopped (SIGTERM) on exit.

    ``before_start(state_dir)`` runs once the configuration is written and before the
    daemon starts (to seed its state database, say). The channel's namespaces are
    ``webhook:hooks:<namespace of the request>``.
    """
    root = workdir / name
    daemon = Daemon(free_port(), secrets.token_urlsafe(24))
    config = _write_orrad(root, daemon.port, daemon.token, daemon_extra)
    if before_start is not None:
        before_start(root / "state")
    argv = [sys.executable, "-m", "orrad", "run", "-c", str(config)]
    with spawn(name, argv, workdir, _child_env()) as child:
        wait_until(child, port_open(daemon.port), "webhook port")
        daemon.child = child
        yield daemon
    daemon.exit_code = child.process.returncode
    if daemon.exit_code != 0:
        log.warning("%s exited with %s; its log ends with:\n%s", name, daemon.exit_code,
                    child.tail())


def bench_orrad_echo(opts: Options, workdir: Path) -> dict[str, Any]:
    """(b) orrad's webhook channel with the ``echo`` provider, at the bare concurrency."""
    with orrad_daemon("orrad_webhook_echo", workdir) as daemon:
        result = load(daemon.port, opts, concurrency=opts.concurrency,
                      namespaces=ECHO_NAMESPACES, path=WEBHOOK_PATH, token=daemon.token,
                      tag="echo", servers=daemon.processes)
    return {**result, "concurrency": opts.concurrency, "namespaces": ECHO_NAMESPACES,
            "daemon_exit_code": daemon.exit_code}


def bench_orrad_echo_wide(opts: Options, workdir: Path) -> dict[str, Any]:
    """The echo daemon at the OpenAI scenario's width: orrad's ceiling without a provider."""
    n = opts.openai_concurrency
    extra = f"routing:\n  max_concurrency: {n}\n"
    with orrad_daemon("orrad_webhook_echo_wide", workdir, extra) as daemon:
        result = load(daemon.port, opts, concurrency=n, namespaces=n, path=WEBHOOK_PATH,
                      token=daemon.token, tag="echo-wide", servers=daemon.processes)
    return {**result, "concurrency": n, "namespaces": n, "daemon_exit_code": daemon.exit_code}


def bench_orrad_openai(opts: Options, workdir: Path) -> dict[str, Any]:
    """(c) orrad's webhook channel with an OpenAI provider that answers after 100 ms."""
    port_file = workdir / "fake-openai.url"
    argv = [sys.executable, "-m", "tests.bench.servers", "fake-openai",
            "--port-file", str(port_file), "--delay", str(opts.openai_delay_s)]
    n = opts.openai_concurrency
    with spawn("fake_openai", argv, workdir, _child_env()) as fake:
        wait_until(fake, port_file.exists, "base_url file")
        base_url = port_file.read_text().strip()
        wait_until(fake, port_open(urlsplit(base_url).port or 80), "listening port")
        extra = (
            "providers:\n"
            "  fake:\n"
            "    kind: openai\n"
            f"    base_url: {base_url}\n"
            "    model: m\n"
            "    api_key: x\n"
            "agents:\n"
            "  llm:\n"
            "    provider: fake\n"
            "default_agent: llm\n"
            "routing:\n"
            f"  max_concurrency: {n}\n"
        )
        with orrad_daemon("orrad_webhook_openai", workdir, extra) as daemon:
            result = load(daemon.port, opts, concurrency=n, namespaces=n, path=WEBHOOK_PATH,
                          token=daemon.token, tag="openai",
                          servers=(*daemon.processes, fake))
    ideal = n / opts.openai_delay_s
    return {**result, "concurrency": n, "namespaces": n,
            "provider_delay_ms": round(opts.openai_delay_s * 1000, 1),
            "ideal_rps": round(ideal, 1), "ratio_to_ideal": round(result["rps"] / ideal, 3),
            "daemon_exit_code": daemon.exit_code}


# -- report --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, Python and library versions."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cores": os.cpu_count(), "usable_cores": usable, "cpu_model": model,
        "platform": platform.platform(), "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        **{name: importlib.metadata.version(name) for name in ("orrad", "trio", "h11", "httpx")},
    }


def _ratio(top: object, bottom: object) -> float | None:
    """``top / bottom`` rounded, or ``None`` when either is missing or zero."""
    if not isinstance(top, int | float) or not isinstance(bottom, int | float) or not bottom:
        return None
    return round(top / bottom, 3)


def add_ratios(report: dict[str, Any]) -> None:
    """Put issue 12's webhook ratios into ``report`` (``None`` where a scenario failed)."""
    bare, echo = report.get("bare_h11", {}), report.get("orrad_webhook_echo", {})
    report["ratio_orrad_to_bare"] = _ratio(echo.get("rps"), bare.get("rps"))
    report["p99_ratio_orrad_to_bare"] = _ratio(echo.get("p99_ms"), bare.get("p99_ms"))
    openai = report.get("orrad_webhook_openai_100ms", {})
    ceiling = openai.get("ideal_rps")
    if "orrad_webhook_echo_wide" in report:
        wide = report["orrad_webhook_echo_wide"].get("rps")
        ceiling = min(ceiling, wide) if ceiling and wide else None
    report["slow_provider_ceiling_rps"] = ceiling
    report["slow_provider_ratio"] = _ratio(openai.get("rps"), ceiling)


def run_benchmark(opts: Options) -> tuple[dict[str, Any], bool]:
    """Run the scenarios; returns the report and whether all of them ran."""
    report: dict[str, Any] = {
        "machine": machine_info(), "concurrency": opts.concurrency,
        "duration_s": opts.duration_s, "warmup_s": opts.warmup_s,
    }
    ok = True
    scenarios: list[tuple[str, Callable[[Options, Path], dict[str, Any]]]] = [
        ("bare_h11", bench_bare),
        ("orrad_webhook_echo", bench_orrad_echo),
        *([("orrad_webhook_echo_wide", bench_orrad_echo_wide)] if opts.echo_wide else []),
        ("orrad_webhook_openai_100ms", bench_orrad_openai),
    ]
    with contextlib.ExitStack() as stack:
        if opts.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orrad-bench-")))
        else:
            workdir = opts.workdir.resolve()
            workdir.mkdir(parents=True)
        for key, scenario in scenarios:
            loadavg = round(os.getloadavg()[0], 2)
            log.info("== %s (load average %.2f)", key, loadavg)
            try:
                report[key] = {**scenario(opts, workdir), "loadavg_1m_before": loadavg}
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                log.error("%s failed: %s", key, exc)
                report[key] = {"error": str(exc)}
                ok = False
    add_ratios(report)
    return report, ok



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the JSON report; 0 when every scenario ran."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unmeasured seconds before each measurement (default 2)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="connections for bare_h11 and orrad_webhook_echo (default 32)")
    parser.add_argument("--openai-concurrency", type=int, default=256,
                        help="connections, namespaces and max_concurrency for the OpenAI "
                             "scenario (default 256)")
    parser.add_argument("--openai-delay", type=float, default=IDEAL_DELAY_S,
                        help="fake OpenAI answer delay in seconds (default 0.1)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="per-request timeout in seconds (default 10)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk, the Python one, or wrk when installed "
                             "(default auto)")
    parser.add_argument("--no-echo-wide", dest="echo_wide", action="store_false",
                        help="skip the echo daemon at the OpenAI scenario's width")
    add_workdir(parser)
    args = parser.parse_args(argv)
    if min(args.duration, args.openai_delay, args.timeout) <= 0 or args.warmup < 0 or min(
            args.concurrency, args.openai_concurrency) < 1:
        parser.error("durations, delay and timeout must be positive; concurrency at least 1")
    opts = Options(duration_s=args.duration, warmup_s=args.warmup,
                   concurrency=args.concurrency, openai_concurrency=args.openai_concurrency,
                   openai_delay_s=args.openai_delay, timeout_s=args.timeout,
                   loadgen=args.loadgen, echo_wide=args.echo_wide, workdir=args.workdir)
    return report_main(lambda: run_benchmark(opts))


if __name__ == "__main__":
    sys.exit(main())
