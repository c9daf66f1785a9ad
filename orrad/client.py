"""``orrad status``, ``reload`` and ``send``: small clients of the running daemon's API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from orrad.config import DaemonConfig
from orrad.errors import DaemonError

__all__ = ["cmd_reload", "cmd_send", "cmd_status"]

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 78


def _base_url(config: DaemonConfig) -> str:
    listen = config.api.listen
    if not listen:
        raise DaemonError("the daemon API is disabled (api.listen is empty)")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _request(config: DaemonConfig, method: str, path: str, *, body: Any = None,
             timeout: float = 30.0) -> Any:
    headers = {"Authorization": f"Bearer {config.api.token}"} if config.api.token else {}
    url = _base_url(config) + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DaemonError(f"cannot reach the daemon at {url}: {exc}") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        if response.status_code == 422 or not isinstance(error, dict):
            raise DaemonError(f"daemon answered HTTP {response.status_code}")
        raise DaemonError(
            f"daemon answered {response.status_code} {error.get('code', '')}: "
            f"{error.get('message', response.text)}"
        )
    return payload


def cmd_status(args: argparse.Namespace, config: DaemonConfig) -> int:
    status = _request(config, "GET", "/v1/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(f"instance {status['instance']}  version {status['version']}  "
          f"up {status['uptime_s']:.0f}s")
    rows = [("CHANNEL", "KIND", "STATE", "GEN", "RESTARTS", "LAST ERROR")]
    for ch in status.get("channels", []):
        rows.append((ch["name"], ch["kind"], ch["state"], str(ch["generation"]),
                     str(ch["restarts"]), (ch.get("last_error") or "")[:60]))
    _print_table(rows)
    if status.get("peers"):
        print()
        _print_table([("PEER", "URL", "STATE", "QUEUE", "LAST ERROR")] + [
            (p["name"], p["url"], p["state"], str(p.get("queue_depth", 0)),
             (p.get("last_error") or "")[:60]) for p in status["peers"]])
    print()
    _print_table([("AGENT", "PROVIDER", "MODEL")] + [
        (a["name"], a["provider"], a.get("model") or "-") for a in status.get("agents", [])])
    return EXIT_OK


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def cmd_reload(args: argparse.Namespace, config: DaemonConfig) -> int:
    result = _request(config, "POST", "/v1/reload")
    rejected = False
    for item in result.get("files", []):
        line = f"{item['result']:<10} {item['file']}"
        for extra in (item.get("error"), item.get("note")):
            if extra:
                line += f"\n  {extra}"
        rejected = rejected or item["result"] == "rejected"
        print(line)
    return EXIT_CONFIG if rejected else EXIT_OK


def cmd_send(args: argparse.Namespace, config: DaemonConfig) -> int:
    body: dict[str, Any] = {"message": args.text}
    if args.namespace:
        body["namespace"] = args.namespace
    if args.agent:
        body["agent"] = args.agent
    try:
        reply = _request(config, "POST", "/v1/messages", body=body, timeout=600)
    except DaemonError as exc:
        print(f"orrad: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(reply["message"])
    return EXIT_OK
