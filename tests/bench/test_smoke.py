"""The benchmark scripts still run: history.py and pipeline.py with tiny sizes print their
JSON (no timings are asserted; the benchmarks themselves are not part of the test run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "history.py"


def test_history_script_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--loadgen", "python", "--duration", "0.3",
         "--warmup", "0", "--concurrency", "2", "--short-namespaces", "2",
         "--long-namespaces", "2", "--long-messages", "50", "--short-messages", "2"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    for key in ("history_overhead_ratio", "cpu_overhead_ratio", "p50_overhead_ratio"):
        assert isinstance(report[key], float), (key, report)
    assert report["long"]["seeded_messages"] == 50
    assert report["long"]["messages_after"]["min"] > 50  # the load reached the seeded sessions
    assert report["short"]["errors"] == 0


def test_pipeline_script_prints_its_figures() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT.with_name("pipeline.py")), "--messages", "64",
         "--warmup", "16", "--concurrency", "8"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["messages"] == 64
    for key in ("messages_per_s", "cpu_us_per_message", "loop_cpu_us_per_message"):
        assert report[key] > 0, (key, report)
