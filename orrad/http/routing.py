"""A small routing table: method plus path pattern to handler.

Patterns are compiled once in :meth:`Router.add` into literal segments and placeholders, so a
lookup is a dict hit for fixed paths and a short segment comparison otherwise; there is no
regex anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from orrad.http.messages import Handler, HTTPError

__all__ = ["Router"]


@dataclass(frozen=True, slots=True)
class _Route:
    index: int  # position in add() order: lower wins
    method: str
    handler: Handler
    max_body_bytes: int | None
    # For patterns with placeholders: one entry per segment, either a literal or
    # (None, name) for a "{name}" placeholder. tail is the name of a trailing "{name:path}".
    segments: tuple[tuple[str | None, str], ...] = ()
    tail: str | None = None

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """Return the placeholder values if ``parts`` (the path split on "/") matches."""
        n = len(self.segments)
        if self.tail is None:
            if len(parts) != n:
                return None
        elif len(parts) <= n:
            return None
        params: dict[str, str] = {}
        for (literal, name), part in zip(self.segments, parts, strict=False):
            if literal is None:
                if not part:
                    return None  # a placeholder never matches an empty segment
                params[name] = part
            elif literal != part:
                return None
        if self.tail is not None:
            rest = "/".join(parts[n:])
            if not rest:
                return None
            params[self.tail] = rest
        return params


class Router:
    """Maps ``(method, path)`` to a handler, its path parameters and its body limit.

    Patterns are either exact (``"/healthz"``) or contain ``"{name}"`` placeholders, each
    matching one whole, non-empty path segment, optionally ending in ``"{name:path}"``, which
    matches the non-empty rest of the path including slashes
    (``"/v1/sessions/{namespace:path}"``). Matching is done on the percent-decoded path.
    Routes are tried in the order they were added; the first whose pattern and method match
    wins. A path some pattern matches under another method is answered 405 with ``Allow``;
    a path no pattern matches is answered 404. ``HEAD`` is not implied by ``GET``.
    """

    def __init__(self) -> None:
        self._count = 0
        # Exact patterns: path -> routes in add() order (usually one per method).
        self._exact: dict[str, list[_Route]] = {}
        self._dynamic: list[_Route] = []

    def add(
        self, method: str, pattern: str, handler: Handler, *, max_body_bytes: int | None = None
    ) -> None:
        """Register ``handler`` for ``method`` on ``pattern``.

        ``max_body_bytes`` overrides the server's default body limit for this route.

        Raises:
            ValueError: the pattern does not start with "/", has an empty or malformed
                placeholder, repeats a name, or has ``{name:path}`` anywhere but at the end.
        """
        if not pattern.startswith("/"):
            raise ValueError(f"route pattern must start with '/': {pattern!r}")
        method = method.upper()
        index = self._count
        self._count += 1
        if "{" not in pattern and "}" not in pattern:
            route = _Route(index, method, handler, max_body_bytes)
            self._exact.setdefault(pattern, []).append(route)
            return
        parts = pattern.split("/")
        segments: list[tuple[str | None, str]] = []
        tail: str | None = None
        seen: set[str] = set()
        for i, part in enumerate(parts):
            if not (part.startswith("{") and part.endswith("}")):
                if "{" in part or "}" in part:
                    raise ValueError(
                        f"placeholder must be a whole path segment in {pattern!r}: {part!r}"
                    )
                segments.append((part, part))
                continue
            name, sep, kind = part[1:-1].partition(":")
            if not name.isidentifier() or (sep and kind != "path"):
                raise ValueError(f"bad placeholder {part!r} in route pattern {pattern!r}")
            if name in seen:
                raise ValueError(f"placeholder {name!r} repeated in route pattern {pattern!r}")
            seen.add(name)
            if sep:
                if i != len(parts) - 1:
                    raise ValueError(f"{{{name}:path}} must end the route pattern {pattern!r}")
                tail = name
            else:
                segments.append((None, name))
        self._dynamic.append(
            _Route(index, method, handler, max_body_bytes, tuple(segments), tail)
        )

    def route(self, method: str, path: str) -> tuple[Handler, dict[str, str], int | None]:
        """Find the handler for ``method`` and the decoded ``path``.

        Returns:
            ``(handler, path_params, max_body_bytes)``; ``max_body_bytes`` is ``None`` when
            the route uses the server default.

        Raises:
            HTTPError: 404 ``not_found`` when no pattern matches the path; 405
                ``method_not_allowed`` with an ``Allow`` header when patterns match it, but
                none for this method.
        """
        allowed: list[str] = []
        best: _Route | None = None
        best_params: dict[str, str] = {}
        for r in self._exact.get(path, ()):
            if r.method == method:
                best = r
                break
            allowed.append(r.method)
        if self._dynamic:
            parts = path.split("/")
            for r in self._dynamic:
                if best is not None and r.index > best.index:
                    break  # a fixed route added earlier wins; later ones cannot matter
                params = r.match(parts)
                if params is None:
                    continue
                if r.method == method:
                    best, best_params = r, params
                    break
                allowed.append(r.method)
        if best is not None:
            return best.handler, best_params, best.max_body_bytes
        if allowed:
            allow = ", ".join(dict.fromkeys(allowed))
            raise HTTPError(
                405,
                "method_not_allowed",
                f"method {method} not allowed on {path}",
                [("allow", allow)],
            )
        raise HTTPError(404, "not_found", f"no route for {path}")
