"""Who may run code, and how often: the shared-secret check and the per-client rate limit.

Pure logic with an injected clock; the middleware in ``app`` applies them to ``/run``.

Whose bucket a request draws from (``client_key``): the token's when a token is configured
(the request got past the token check, so it holds it); else the client's address — the
peer's, or, when the peer is one of ``SANDBOX_TRUSTED_PROXIES``, the address that the chain of
trusted proxies in ``X-Forwarded-For`` received the request from.  ``X-Forwarded-For`` from any
other peer is ignored: a client could write anything there.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def token_matches(headers: Mapping[str, str], token: str) -> bool:
    """``Authorization: Bearer <token>`` or ``X-Sandbox-Token: <token>``, compared in constant time."""
    offered = headers.get("X-Sandbox-Token")
    if offered is None:
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        offered = value.strip() if scheme.lower() == "bearer" else None
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _is_trusted(address, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy; then, walking
    ``X-Forwarded-For`` (every header, in order) from the right, the first address that is not
    a trusted proxy (all trusted: the leftmost; an unreadable entry ends the walk)."""
    current = _address(peer or "")
    if current is None:
        return peer or "unknown"
    if not _is_trusted(current, trusted):
        return str(current)
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        current = address
        if not _is_trusted(address, trusted):
            break
    return str(current)


def client_key(*, token: str | None, peer: str | None, forwarded_for: Iterable[str],
               trusted: Sequence[Network]) -> str:
    """The rate limit's key: ``token:<digest>`` when a token is configured, else ``addr:<client>``."""
    if token:
        return "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    return "addr:" + client_address(peer, forwarded_for, trusted)


@dataclass
class RateLimiter:
    """A token bucket per client: ``limit`` requests per ``period_s``, refilled continuously.

    Idle clients' buckets are dropped once full again, so memory stays bounded by the
    number of recently active clients."""

    limit: int
    period_s: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, client: str) -> tuple[bool, float]:
        """(allowed, seconds until the next request would be allowed)."""
        now = self.clock()
        rate = self.limit / self.period_s
        tokens, last = self._buckets.get(client, (float(self.limit), now))
        tokens = min(float(self.limit), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            allowed, retry = True, 0.0
        else:
            self._buckets[client] = (tokens, now)
            allowed, retry = False, (1.0 - tokens) / rate
        if len(self._buckets) > 4096:
            self._forget_full(now, rate)
        return allowed, retry

    def _forget_full(self, now: float, rate: float) -> None:
        for client, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= self.limit:
                del self._buckets[client]
