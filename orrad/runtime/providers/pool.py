"""The providers' HTTP client: :class:`orrad.http.client.PooledClient`, its failures
translated at this boundary into provider errors.

:class:`~orrad.errors.ProviderUnavailable` (transient: refused, reset, timed out, broken
response; the provider layer retries it) or :class:`~orrad.errors.ProviderError` (a bad URL,
a configured header that cannot be sent), with the client's words.
"""

from __future__ import annotations

from orrad.errors import ProviderError, ProviderUnavailable
from orrad.http.client import (
    KEEPALIVE_EXPIRY_S,
    MAX_BODY_BYTES,
    Answer,
    InvalidRequest,
    PooledClient,
    RequestFailed,
)

__all__ = ["CONNECT_TIMEOUT_S", "DEFAULT_TIMEOUT_S", "KEEPALIVE_EXPIRY_S", "MAX_BODY_BYTES",
           "Answer", "ProviderClient"]

CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 120.0


class ProviderClient(PooledClient):
    """:class:`~orrad.http.client.PooledClient` raising provider errors."""

    async def post(self, url: str, *, headers: dict[str, str], body: bytes,
                   timeout_s: float) -> Answer:
        """POST ``body`` to ``url``; the whole answer within ``timeout_s`` seconds.

        Raises:
            ProviderUnavailable: timed out, refused, reset, or a broken response.
            ProviderError: an invalid or unsupported URL, a header that cannot be sent.
        """
        try:
            return await super().post(url, headers=headers, body=body, timeout_s=timeout_s)
        except RequestFailed as exc:
            raise ProviderUnavailable(exc.detail) from None
        except InvalidRequest as exc:
            raise ProviderError(exc.detail) from None
