"""Drive `wrk <https://github.com/wg/wrk>`_ with the same requests as :mod:`tests.bench.loadgen`.

The Python load generator saturates near 4,000–6,000 req/s on this machine, so against a
fast server it measures itself. ``wrk`` (C) does not. It runs one thread per connection
(``-tN -cN``) so that each thread's requests are its connection's: a Lua script makes
every request a ``POST`` with a JSON body ``{"message", "namespace", "id"}`` whose ``id`` is
unique in the run and whose namespace rotates like :mod:`tests.bench.loadgen`'s (two
requests in flight never share a namespace when ``namespaces`` is a multiple of the
connections), with a bearer token when one is given, and prints one JSON line at the end
with wrk's own counts and latency percentiles. wrk has no warm-up phase, so a short
unmeasured run comes first.

:func:`run` returns the same keys as ``loadgen``'s summary (``rps``, ``p50_ms``, ``p99_ms``,
``errors``, ...) plus ``"loadgen": "wrk"``. wrk counts a non-2xx answer as an error but does
not read the body, so it cannot check that a 200 carries the request's id (the Python
generator can; :mod:`tests.bench.webhook` keeps it as the fallback and for that check).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["available", "run"]

SCRIPT = r"""
local token = os.getenv("BENCH_TOKEN") or ""
local namespaces = tonumber(os.getenv("BENCH_NAMESPACES") or "64")
local tag = os.getenv("BENCH_TAG") or "wrk"
local threads = 0

-- One connection per wrk thread, so each thread knows its connection: worker i's k-th
-- request uses namespace (i + k * connections) mod namespaces, as tests.bench.loadgen does,
-- and two requests in flight never share a namespace's lane.
setup = function(thread)
  thread:set("index", threads)
  threads = threads + 1
  thread:set("connections", tonumber(os.getenv("BENCH_CONNECTIONS") or "1"))
end

init = function(args)
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if token ~= "" then wrk.headers["Authorization"] = "Bearer " .. token end
end

request = function()
  local ns = (index + counter * connections) % namespaces
  local body = string.format('{"message":"bench %d/%d","namespace":"ns%d","id":"%s-%d-%d"}',
                             index, counter, ns, tag, index, counter)
  counter = counter + 1
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def available() -> bool:
    """Whether a ``wrk`` executable is on ``PATH``."""
    return shutil.which("wrk") is not None


def _wrk(url: str, script: Path, *, concurrency: int, duration_s: float, timeout_s: float,
         env: dict[str, str]) -> dict[str, Any]:
    argv = ["wrk", f"-t{concurrency}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s", "-s", str(script), url]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          timeout=duration_s + timeout_s + 30, check=False, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip()[:500]}")
    last = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not last:
        raise RuntimeError(f"wrk printed no summary: {done.stdout[-500:]!r}")
    result: dict[str, Any] = json.loads(last[-1])
    return result


def run(port: int, path: str, *, concurrency: int, namespaces: int, warmup_s: float,
        duration_s: float, timeout_s: float, token: str | None, tag: str) -> dict[str, Any]:
    """Load ``http://127.0.0.1:port/path`` with wrk; a loadgen-style summary."""
    url = f"http://127.0.0.1:{port}{path}"
    with tempfile.TemporaryDirectory(prefix="orrad-wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(SCRIPT)
        base = {**os.environ, "BENCH_TOKEN": token or "", "BENCH_NAMESPACES": str(namespaces),
                "BENCH_CONNECTIONS": str(concurrency)}
        if warmup_s > 0:
            _wrk(url, script, concurrency=concurrency, duration_s=warmup_s,
                 timeout_s=timeout_s, env={**base, "BENCH_TAG": f"{tag}-warm"})
        raw = _wrk(url, script, concurrency=concurrency, duration_s=duration_s,
                   timeout_s=timeout_s, env={**base, "BENCH_TAG": tag})
    seconds = raw["duration_us"] / 1e6
    errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
    ok = max(0, raw["requests"] - raw["status"])
    return {
        "loadgen": "wrk",
        "requests": raw["requests"],
        "rps": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "errors": errors,
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout")
                        if raw[k]},
        "duration_s": round(seconds, 2),
    }
