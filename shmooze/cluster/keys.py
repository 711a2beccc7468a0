"""Where an application's state lives in etcd: the one layout every host reads and writes.

Under the ``etcd_prefix`` setting (``/shmooze/`` by default; one prefix per application):

- ``services/NAME``: where service NAME is reached, as a :class:`Registration`, bound to the lease of
  the process serving it. Creating it (only when absent, in a transaction) is winning the election
  among the service's candidate hosts; it goes with the lease, so a host that stops renewing loses
  it, and watching ``services/`` is discovery.
- ``journal/NAME/``: the journal of service NAME (its snapshot and appended batches).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shmooze.settings import Settings


def services_prefix(settings: Settings) -> str:
    return f"{settings.etcd_prefix}services/"


def service_key(settings: Settings, name: str) -> str:
    return f"{services_prefix(settings)}{name}"


def journal_prefix(settings: Settings, name: str) -> str:
    return f"{settings.etcd_prefix}journal/{name}/"


@dataclass(frozen=True)
class Registration:
    """Where a service is reached, and which process on which host serves it."""

    url: str  # http://ADDRESS:PORT, the address others use (not necessarily the one it listens on)
    host: str  # the serving host's name
    pid: int
    since: float  # wall-clock time the process won (for status pages)

    @classmethod
    def now(cls, url: str, host: str, pid: int) -> Registration:
        return cls(url, host, pid, time.time())

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Registration | None:
        """The registration in ``raw``; None for anything else (a key written by something else)."""
        try:
            data = json.loads(raw)
            return cls(str(data["url"]), str(data["host"]), int(data["pid"]), float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None
