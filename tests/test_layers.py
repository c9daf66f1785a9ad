"""Layering that import-linter cannot see: what importing a channel drags in at run time,
and state kept in module globals of the channel layer (it must live in the ledger or be
handed in through the channel context)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types
import weakref
from collections import OrderedDict, defaultdict, deque

import orrad.channels

MUTABLE = (dict, list, set, bytearray, deque, OrderedDict, defaultdict,
           weakref.WeakKeyDictionary, weakref.WeakValueDictionary, weakref.WeakSet)


def test_importing_the_webhook_channel_loads_no_supervisor_router_or_api() -> None:
    code = ("import sys, orrad.channels.webhook, orrad.channels.discord; "
            "print(sorted(m for m in sys.modules if m in ('orrad.supervisor', "
            "'orrad.router', 'orrad.api', 'orrad.daemon', 'orrad.agents')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def _channel_modules() -> list[types.ModuleType]:
    names = [info.name for info in pkgutil.walk_packages(orrad.channels.__path__,
                                                          "orrad.channels.")]
    return [orrad.channels, *(importlib.import_module(name) for name in names)]


def test_no_mutable_module_state_in_the_channel_layer() -> None:
    found = [
        f"{module.__name__}.{name}: {type(value).__name__}"
        for module in _channel_modules()
        for name, value in vars(module).items()
        if not (name.startswith("__") and name.endswith("__")) and isinstance(value, MUTABLE)
    ]
    assert found == []


def test_the_check_sees_module_state() -> None:
    # The check above would catch what the old channels kept (a dict of running ids).
    module = types.ModuleType("probe")
    module._RUNNING = {}  # type: ignore[attr-defined]
    assert any(isinstance(v, MUTABLE) for k, v in vars(module).items()
               if not k.startswith("__"))
