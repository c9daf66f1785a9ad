"""Channels: where messages come from and where their answers go."""

from orrad.channels.base import BaseChannel, Channel, ChannelAdapter, ChannelContext, ReplyTarget

__all__ = ["BaseChannel", "Channel", "ChannelAdapter", "ChannelContext", "ReplyTarget"]
