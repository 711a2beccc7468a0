"""Rate limits per client at the gateway: a token bucket for each client's commands that change state.

Each client (the signed-in user, else the client's address: :mod:`shmooze.caller`) has a bucket of
``burst`` commands that refills at ``rate`` commands a second; a command that changes state takes one,
and a client whose bucket is empty is answered 429 with ``Retry-After`` (the seconds until its next
command passes). Reads are never counted.

One check is O(1) and holds a lock only around a few arithmetic steps, never across I/O: a client's
flood costs the others nothing but the time to refuse it. Buckets live in insertion order of their
last use, so the ones that have been idle long enough to be full again (they would say the same as
a new bucket) are forgotten from the front, a few at each check, and at most ``max_clients`` are
kept (past that, the oldest is forgotten: a client rotating addresses gains at most a fresh bucket).

Each gateway worker keeps its own buckets (no shared state between processes: see docs/safety.md,
"Rate limits").
"""

from __future__ import annotations

import collections
import math
import threading
import time
from typing import Callable


class RateLimiter:
    """Token buckets, one per client name: ``rate`` commands a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs a rate above 0 and a burst of at least 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_clients = max_clients
        self.clock = clock
        #: Seconds an unused bucket takes to be full again: after that it is forgotten.
        self.refill_time = self.burst / rate
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()  # [tokens, at]
        self._lock = threading.Lock()
        #: Commands refused so far.
        self.refused = 0

    def take(self, client: str) -> float:
        """Take one command from ``client``'s bucket: 0.0 when it may pass, else the seconds to wait."""
        now = self.clock()
        with self._lock:
            buckets = self._buckets
            bucket = buckets.get(client)
            if bucket is None:
                bucket = buckets[client] = [self.burst, now]
                self._forget_full(now)
            else:
                buckets.move_to_end(client)
                bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
                bucket[1] = now
            if bucket[0] >= 1.0:
                bucket[0] -= 1.0
                return 0.0
            self.refused += 1
            return (1.0 - bucket[0]) / self.rate

    def _forget_full(self, now: float) -> None:
        """Forget up to two buckets idle long enough to be full (more than one per new client: the
        table shrinks back once the clients go), and the oldest past ``max_clients``."""
        buckets = self._buckets
        for _ in range(2):
            oldest = next(iter(buckets.values()))
            if now - oldest[1] < self.refill_time:
                break
            buckets.popitem(last=False)
        while len(buckets) > self.max_clients:
            buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after(wait: float) -> str:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait of ``wait`` seconds."""
    return str(max(1, math.ceil(wait)))
