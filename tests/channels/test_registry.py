"""The built-in kinds: known by name and config type at once, imported when first made."""

from __future__ import annotations

import subprocess
import sys

import pytest

from orrad.channels.base import ChannelContext
from orrad.channels.registry import BUILTIN_KINDS, BuiltinKind, default_registry
from orrad.config import DaemonConfig, StdinChannelConfig


def test_a_registry_imports_no_channel_module() -> None:
    script = ("import sys\n"
              "from orrad.channels.registry import default_registry\n"
              "kinds = default_registry().config_types()\n"
              "assert set(kinds) >= {'stdin', 'webhook', 'discord'}, kinds\n"
              "loaded = [m for m in ('orrad.channels.discord', 'trio_websocket',\n"
              "                      'orrad.channels.webhook', 'orrad.channels.stdin')\n"
              "          if m in sys.modules]\n"
              "print(','.join(loaded))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("builtin", BUILTIN_KINDS, ids=lambda kind: kind.kind)
def test_each_builtin_names_its_class_and_config(builtin: BuiltinKind) -> None:
    cls = builtin.load()
    assert cls.kind == builtin.kind
    assert cls.config_type is builtin.config_type


def test_creating_a_channel_makes_the_class_of_its_kind() -> None:
    from orrad.channels.stdin import StdinChannel

    config = StdinChannelConfig(name="term", kind="stdin")
    channel = default_registry().create(config, ChannelContext("term", DaemonConfig()))
    assert isinstance(channel, StdinChannel)
