"""Who may run code, and how often: the shared-secret check and the per-client rate limit.

Pure logic with an injected clock; the middleware in ``app`` applies them to ``/run``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


def token_matches(headers: Mapping[str, str], token: str) -> bool:
    """``Authorization: Bearer <token>`` or ``X-Sandbox-Token: <token>``, compared in constant time."""
    offered = headers.get("X-Sandbox-Token")
    if offered is None:
        scheme, _, value = headers.get("Authorization", "").partition(" ")
        offered = value.strip() if scheme.lower() == "bearer" else None
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))


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
