"""The ``webhook`` channel kind: signed HTTP ingress with sync and async replies."""

from orrad.channels.webhook.channel import WebhookChannel

__all__ = ["WebhookChannel"]
