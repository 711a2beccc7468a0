"""Waiting for a condition by polling it, under a deadline on the monotonic clock.

The tests and the benchmarks wait this way for processes and ports; it needs nothing but the
standard library.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "", interval: float = 0.02,
               error: type[Exception] = TimeoutError) -> Any:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and return that;
    raise ``error`` naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)
