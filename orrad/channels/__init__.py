"""Channels: where messages come from and where their answers go."""

from orrad.channels.base import BaseChannel, Channel, ChannelContext, ReplyTarget

__all__ = ["BaseChannel", "Channel", "ChannelContext", "ReplyTarget"]
