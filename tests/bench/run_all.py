"""Every issue-12 benchmark in one run, one JSON summary as the last line of stdout.

In order, each in this process (its servers and daemons in their own processes), all with
the same load generator:

1. :mod:`tests.bench.webhook`: bare trio+h11 and orrad webhook + echo + SQLite at c=32,
   the echo daemon at c=256 and the fake OpenAI provider answering after 100 ms at c=256:
   ``webhook_ratio``, ``webhook_p99_ratio``, ``slow_provider_ratio``;
2. :mod:`tests.bench.history`: 10,000-message sessions against 10-message ones:
   ``history_overhead_ratio``;
3. :mod:`tests.bench.idle`: resident memory of 10,000 sessions: ``idle_sessions_mb``;
4. :mod:`tests.bench.federation`: one federation hop over a local answer:
   ``federation_hop_p50_ms``;
5. :mod:`tests.bench.ready`: ``orrad run`` with the shipped config to ``READY=1``:
   ``ready_s``.

The load generator is ``wrk`` when it is on ``PATH``; with ``--install-wrk`` a missing wrk
is installed first (``apt-get install -y wrk``, after ``apt-get update`` if that alone
fails); without wrk the Python generator is used and the summary says so
(``loadgen: "python"``, ``loadgen_note``). ``--loadgen`` forces one.

Usage (from the repository root, in the project's venv; under 2 minutes on 2 cores)::

    python tests/bench/run_all.py [--install-wrk] [--details report.json]

The last line of stdout is one JSON object: the figures above, ``loadgen``, ``targets``
(each figure with issue 12's goal and whether it is met), ``raw`` (the figures the ratios
come from), ``errors`` (benchmarks that failed, with why), ``request_errors`` (non-200
answers, broken connections and timeouts, per scenario, when any), ``elapsed_s``, where
the measured orrad came from, and per benchmark the load average before it and
``foreign_cpu_cores``: the cores that processes other than this run's kept busy meanwhile
(machine-wide busy time from ``/proc/stat`` minus this run's own; figures measured while
that is well above 0 shared the machine and are not comparable). ``--details`` also
writes every benchmark's whole report to a file. Logs go to stderr. The exit status is 1
when a benchmark reported a failure (it could not run, a daemon did not exit 0, or, in
history, idle and federation, a request failed); a target not met is not a failure. To
measure another orrad tree, put it first on ``PYTHONPATH`` (see :mod:`tests.bench.webhook`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    # appended, not prepended: an orrad first on PYTHONPATH (another checkout) is the one run
    sys.path.append(str(Path(__file__).resolve().parents[2]))

import orrad
from tests.bench import federation, history, idle, ready, webhook, wrk
from tests.bench.cli import add_workdir, setup

__all__ = ["TARGETS", "choose_loadgen", "install_wrk", "main", "run_all"]

log = logging.getLogger("bench.run_all")

BUDGET_S = 300.0
APT_TIMEOUT_S = 240.0

# figure -> (goal, whether a larger value is better)
TARGETS: dict[str, tuple[float, bool]] = {
    "webhook_ratio": (0.5, True),
    "webhook_p99_ratio": (2.0, False),
    "slow_provider_ratio": (0.9, True),
    "history_overhead_ratio": (2.0, False),
    "idle_sessions_mb": (50.0, False),
    "federation_hop_p50_ms": (3.0, False),
    "ready_s": (1.0, False),
}


# -- the load generator ----------------------------------------------------------------------


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["apt-get", *args]
    if os.geteuid() != 0 and shutil.which("sudo"):
        argv = ["sudo", "-n", *argv]
    log.info("running %s", " ".join(argv))
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=APT_TIMEOUT_S, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def install_wrk() -> str | None:
    """Install wrk with apt-get; ``None`` when it is then on PATH, else why not."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    try:
        done = _apt("install", "-y", "wrk")
        if done.returncode != 0:  # perhaps no package lists yet
            _apt("update")
            done = _apt("install", "-y", "wrk")
    except (OSError, subprocess.SubprocessError) as exc:
        return f"apt-get failed: {exc}"
    if wrk.available():
        return None
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    return f"apt-get install -y wrk exited with {done.returncode}: {tail[0][:300]}"


def choose_loadgen(requested: str, install: bool) -> tuple[str, str | None]:
    """The load generator to use for every benchmark, and a note when it is not wrk."""
    if requested == "python":
        return "python", "--loadgen python"
    if wrk.available():
        return "wrk", None
    problem = install_wrk() if install else "wrk is not installed (--install-wrk installs it)"
    if problem is None:
        return "wrk", "wrk installed by --install-wrk"
    if requested == "wrk":
        raise SystemExit(f"--loadgen wrk: {problem}")
    log.warning("%s: falling back to the Python load generator, which saturates near "
                "4,000-6,000 req/s and hides most of the gap to the bare server", problem)
    return "python", f"{problem}; used the Python load generator (saturates near 4-6k req/s)"


# -- the run ---------------------------------------------------------------------------------


def _source() -> dict[str, Any]:
    """Which orrad was measured: its import path and, when it is this repository's, the
    commit and whether ``orrad/`` had uncommitted changes."""
    path = Path(orrad.__file__).resolve().parent
    info: dict[str, Any] = {"orrad_path": str(path)}
    if path != webhook.REPO / "orrad":
        return info  # another tree first on PYTHONPATH: this repository's HEAD is not it
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(webhook.REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(webhook.REPO), "status", "--porcelain",
                                "--", "orrad"], capture_output=True, text=True, timeout=10,
                               check=False)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            info["orrad_tree_modified"] = bool(dirty.stdout.strip())
    return info


def _busy_jiffies() -> int | None:
    """Machine-wide busy CPU time (all cores) from ``/proc/stat``, in clock ticks."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    return sum(fields[:8]) - fields[3] - fields[4]


def _own_cpu_s() -> float:
    """CPU time of this process and of its children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _foreign_cores(busy_before: int | None, own_before: float, seconds: float) -> float | None:
    """Cores kept busy by processes that are not this run's, on average, since the marks
    (every child of this run has been waited for by then, so its time is in ``own``)."""
    busy_after = _busy_jiffies()
    if busy_before is None or busy_after is None or seconds <= 0:
        return None
    busy_s = (busy_after - busy_before) / os.sysconf("SC_CLK_TCK")
    return round(max(0.0, busy_s - (_own_cpu_s() - own_before)) / seconds, 2)


def _get(report: dict[str, Any], *path: str) -> Any:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_all(loadgen: str, workdir: Path) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """Run every benchmark; (summary, every report in full, whether all ran cleanly)."""
    steps: list[tuple[str, Callable[[], tuple[dict[str, Any], bool]]]] = [
        ("webhook", lambda: webhook.run_benchmark(
            webhook.Options(loadgen=loadgen, workdir=workdir / "webhook"))),
        ("history", lambda: history.run_benchmark(
            history.Options(loadgen=loadgen, workdir=workdir / "history"))),
        ("idle", lambda: idle.run_benchmark(idle.Options(workdir=workdir / "idle"))),
        ("federation", lambda: federation.run_benchmark(
            federation.Options(workdir=workdir / "federation"))),
        ("ready", lambda: ready.run_benchmark(ready.Options(workdir=workdir / "ready"))),
    ]
    reports: dict[str, Any] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    foreign: dict[str, float | None] = {}
    loadavg: dict[str, float] = {}
    all_ok = True
    for name, step in steps:
        loadavg[name] = round(os.getloadavg()[0], 2)
        log.info("==== %s (load average %.2f)", name, loadavg[name])
        began, busy, own = time.monotonic(), _busy_jiffies(), _own_cpu_s()
        try:
            report, ok = step()
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            log.error("%s failed: %s", name, exc)
            report, ok = {"error": str(exc)}, False
        timings[name] = round(time.monotonic() - began, 1)
        foreign[name] = _foreign_cores(busy, own, time.monotonic() - began)
        if foreign[name]:
            log.info("%s: other processes kept %.2f cores busy meanwhile", name, foreign[name])
        reports[name] = report
        if not ok:
            all_ok = False
            errors[name] = _first_error(report) or "a request failed or a process exited non-zero"

    w, h, i, f, r = (reports[k] for k in ("webhook", "history", "idle", "federation", "ready"))
    figures = {
        "webhook_ratio": w.get("ratio_orrad_to_bare"),
        "webhook_p99_ratio": w.get("p99_ratio_orrad_to_bare"),
        "slow_provider_ratio": w.get("slow_provider_ratio"),
        "history_overhead_ratio": h.get("history_overhead_ratio"),
        "idle_sessions_mb": i.get("idle_sessions_mb"),
        "federation_hop_p50_ms": f.get("federation_hop_p50_ms"),
        "ready_s": r.get("ready_s"),
    }
    targets = {}
    for key, (goal, larger_is_better) in TARGETS.items():
        value = figures[key]
        met = None if value is None else (value >= goal if larger_is_better else value <= goal)
        targets[key] = {"value": value, "goal": f"{'>=' if larger_is_better else '<='} {goal:g}",
                        "met": met}
    raw = {
        "bare_h11_c32": _pick(w.get("bare_h11")),
        "orrad_echo_c32": _pick(w.get("orrad_webhook_echo")),
        "orrad_echo_c256": _pick(w.get("orrad_webhook_echo_wide")),
        "orrad_openai_100ms_c256": _pick(w.get("orrad_webhook_openai_100ms")),
        "slow_provider_ceiling_rps": w.get("slow_provider_ceiling_rps"),
        "history_short": {**_pick(h.get("short")),
                          "messages_after": _get(h, "short", "messages_after")},
        "history_long": {**_pick(h.get("long")),
                         "messages_after": _get(h, "long", "messages_after")},
        "history_cpu_overhead_ratio": h.get("cpu_overhead_ratio"),
        "history_p50_overhead_ratio": h.get("p50_overhead_ratio"),
        "idle_rss_kib": i.get("rss_kib"),
        "idle_sessions_mb_from_empty": i.get("idle_sessions_mb_from_empty"),
        "federation_local_p50_ms": _get(f, "local", "p50_ms"),
        "federation_relayed_p50_ms": _get(f, "relayed", "p50_ms"),
        "federation_hop_p99_ms": f.get("federation_hop_p99_ms"),
        "ready_each_s": [run.get("ready_s") for run in r.get("each", [])],
    }
    request_errors = {
        key: count for key, count in (
            *((f"webhook.{k}", _get(w, k, "errors")) for k in (
                "bare_h11", "orrad_webhook_echo", "orrad_webhook_echo_wide",
                "orrad_webhook_openai_100ms")),
            ("history.short", _get(h, "short", "errors")),
            ("history.long", _get(h, "long", "errors")),
            ("idle", i.get("failures")),
            ("federation.local", _get(f, "local", "errors")),
            ("federation.relayed", _get(f, "relayed", "errors")))
        if count}
    summary: dict[str, Any] = {
        **figures, "loadgen": loadgen, "targets": targets, "raw": raw, "errors": errors,
        "request_errors": request_errors, "seconds_per_benchmark": timings,
        "loadavg_1m_before": loadavg, "foreign_cpu_cores": foreign,
    }
    return summary, reports, all_ok


def _pick(report: Any) -> dict[str, Any]:
    """The headline figures of one load scenario (or its error)."""
    if not isinstance(report, dict):
        return {}
    keys = ("rps", "p50_ms", "p99_ms", "errors", "cpu_cores", "error")
    return {key: report[key] for key in keys if key in report}


def _first_error(report: dict[str, Any]) -> str | None:
    """The first ``error`` found in a report, however deep (for the summary)."""
    if isinstance(report.get("error"), str):
        return str(report["error"])[:300]
    for value in report.values():
        if isinstance(value, dict) and (found := _first_error(value)):
            return found
    return None



def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run everything, print the summary as the last line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install-wrk", action="store_true",
                        help="install wrk with apt-get when it is missing")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator (default auto: wrk when installed)")
    parser.add_argument("--details", type=Path, default=None,
                        help="also write every benchmark's whole report (JSON) to this file")
    add_workdir(parser)
    args = parser.parse_args(argv)
    setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    began = time.monotonic()
    loadgen, note = choose_loadgen(args.loadgen, args.install_wrk)
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir is None:
                workdir = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="orrad-bench-all-")))
            else:
                workdir = args.workdir.resolve()
                workdir.mkdir(parents=True)
            summary, reports, ok = run_all(loadgen, workdir)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    elapsed = round(time.monotonic() - began, 1)
    if note:
        summary["loadgen_note"] = note
    summary.update(elapsed_s=elapsed, over_budget=elapsed > BUDGET_S,
                   cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"), **_source())
    if args.details is not None:
        args.details.write_text(json.dumps({"summary": summary, **reports}, indent=2) + "\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
