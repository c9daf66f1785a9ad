"""Federation between orrad daemons (CONTRACT §6).

Self-contained building blocks; the daemon wires them into its message pipeline:

- :mod:`~orrad.federation.wire`: msgspec wire types of the federation API;
- :mod:`~orrad.federation.signing`: per-pair HMAC-SHA256 request signing and verification;
- :mod:`~orrad.federation.routing`: namespace ownership, ``name@peer``, the loop rule;
- :mod:`~orrad.federation.breaker`: a per-peer circuit breaker;
- :mod:`~orrad.federation.client`: :class:`PeerClient`, signed and retried calls to peers;
- :mod:`~orrad.federation.server`: the routes served on ``federation.listen``;
- :mod:`~orrad.federation.errors`: the ``FederationError`` branch of the error tree.
"""
