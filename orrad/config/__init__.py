"""orrad configuration: the daemon file, channel files, ``${…}`` expansion (CONTRACT §2).

Typical use::

    path = find_config_file(args.config)
    daemon = load_daemon_config(path, known_tools=registry.names())
    channels = load_channels(daemon, BUILTIN_CHANNEL_KINDS | plugin_kinds)

Every problem is a :class:`~orrad.errors.ConfigError` printed as ``PATH:LINE:COL: message``;
loaders raise :class:`~orrad.errors.ConfigErrors` holding all of them.
"""

from orrad.config.expand import ExpansionError as ExpansionError
from orrad.config.expand import expand as expand
from orrad.config.loader import BUILTIN_CHANNEL_KINDS as BUILTIN_CHANNEL_KINDS
from orrad.config.loader import DEFAULT_CONFIG_PATHS as DEFAULT_CONFIG_PATHS
from orrad.config.loader import ChannelSet as ChannelSet
from orrad.config.loader import find_config_file as find_config_file
from orrad.config.loader import list_channel_files as list_channel_files
from orrad.config.loader import load_channel_file as load_channel_file
from orrad.config.loader import load_channels as load_channels
from orrad.config.loader import load_daemon_config as load_daemon_config
from orrad.config.schema import AgentConfig as AgentConfig
from orrad.config.schema import ApiConfig as ApiConfig
from orrad.config.schema import ChannelConfig as ChannelConfig
from orrad.config.schema import DaemonConfig as DaemonConfig
from orrad.config.schema import DiscordChannelConfig as DiscordChannelConfig
from orrad.config.schema import FederationConfig as FederationConfig
from orrad.config.schema import PeerConfig as PeerConfig
from orrad.config.schema import PolicyConfig as PolicyConfig
from orrad.config.schema import Problem as Problem
from orrad.config.schema import ProviderConfig as ProviderConfig
from orrad.config.schema import RestartConfig as RestartConfig
from orrad.config.schema import RestartPolicy as RestartPolicy
from orrad.config.schema import RoutingConfig as RoutingConfig
from orrad.config.schema import StdinChannelConfig as StdinChannelConfig
from orrad.config.schema import WebhookAuthConfig as WebhookAuthConfig
from orrad.config.schema import WebhookChannelConfig as WebhookChannelConfig
from orrad.config.schema import is_loopback as is_loopback
from orrad.config.schema import normalized_base_url as normalized_base_url
from orrad.config.schema import parse_listen as parse_listen

__all__ = [
    "BUILTIN_CHANNEL_KINDS",
    "DEFAULT_CONFIG_PATHS",
    "AgentConfig",
    "ApiConfig",
    "ChannelConfig",
    "ChannelSet",
    "DaemonConfig",
    "DiscordChannelConfig",
    "ExpansionError",
    "FederationConfig",
    "PeerConfig",
    "PolicyConfig",
    "Problem",
    "ProviderConfig",
    "RestartConfig",
    "RestartPolicy",
    "RoutingConfig",
    "StdinChannelConfig",
    "WebhookAuthConfig",
    "WebhookChannelConfig",
    "expand",
    "find_config_file",
    "is_loopback",
    "list_channel_files",
    "load_channel_file",
    "load_channels",
    "load_daemon_config",
    "normalized_base_url",
    "parse_listen",
]
