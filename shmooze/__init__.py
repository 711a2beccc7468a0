"""shmooze: process-backed web applications.

``from shmooze import Client`` gives the Python client. The package's top level
imports nothing else on purpose: module processes import ``shmooze.modules`` and
must not pay for the framework's web stack, so ``Client`` and the client's errors
are loaded on first use.
"""

from typing import Any

__version__ = "0.1.0"

_FROM_CLIENT = ("Client", "ServiceClient", "Batch", "ShmoozeError", "ServiceError", "TransportError", "Timeout")

__all__ = ["__version__", *_FROM_CLIENT]


def __getattr__(name: str) -> Any:
    if name in _FROM_CLIENT:
        from shmooze import client

        return getattr(client, name)
    raise AttributeError(f"module 'shmooze' has no attribute {name!r}")
