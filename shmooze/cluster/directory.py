"""Discovery: where each service is reached right now, as etcd's ``services/`` says.

A :class:`Directory` reads ``services/`` once, then follows it with a watch from the revision it
read, so :meth:`Directory.url` answers from memory at once and a change (a service that moved, a
new leader, a leader gone) reaches the callbacks within the watch's delay (milliseconds on a live
link). Changes are applied per key by revision: what the first read saw and what the watch delivers
can arrive in either order, the newer one wins.

When etcd cannot be reached the directory keeps what it knew (a gateway cut off from etcd still
reaches the services where they were) and reads again until it can.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable

from shmooze.cluster import keys
from shmooze.cluster.etcd import CoordinationError, Entry, Etcd, NoQuorum, Watch, decode, encode, prefix_end
from shmooze.cluster.keys import Registration

if TYPE_CHECKING:
    from shmooze.settings import Settings

log = logging.getLogger(__name__)

#: What a callback hears: the service's name and its registration (None: it has none right now).
Listener = Callable[[str, "Registration | None"], None]

RETRY_SECONDS = 0.5  # between first reads while etcd cannot be reached


class Directory:
    """Every service's registration under ``prefix`` (``services/`` of :mod:`shmooze.cluster.keys`)."""

    def __init__(self, etcd: Etcd, prefix: str, idle: float = 5.0):
        self.etcd = etcd
        self.prefix = prefix
        self.idle = idle
        self._found: dict[str, Registration] = {}
        self._revisions: dict[str, int] = {}  # per name: the revision of the last change applied (deletes too)
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._watch: Watch | None = None
        self._stopped = threading.Event()
        #: Whether a first read has succeeded (until then nothing is known, not "no registration").
        self.loaded = threading.Event()
        #: Why the last read failed ("" after one succeeded).
        self.problem = "not read yet"

    @classmethod
    def for_settings(cls, settings: Settings) -> Directory:
        """The directory of the application's services (``etcd`` and ``etcd_prefix`` settings)."""
        return cls(Etcd(settings.etcd), keys.services_prefix(settings))

    # -- what callers ask ------------------------------------------------------------------------

    def registration(self, name: str) -> Registration | None:
        return self._found.get(name)

    def url(self, name: str) -> str | None:
        """``http://ADDRESS:PORT`` where service ``name`` is reached now; None while it has no registration."""
        found = self._found.get(name)
        return found.url if found is not None else None

    def registrations(self) -> dict[str, Registration]:
        return dict(self._found)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(name, registration or None)`` on every change from now on (from the watch's thread)."""
        with self._lock:
            self._listeners.append(listener)

    # -- following etcd --------------------------------------------------------------------------

    def start(self, wait: float = 0.0) -> Directory:
        """Read once and follow; ``wait``: seconds to give the first read (a thread goes on trying after)."""
        if not self._read():
            threading.Thread(target=self._read_until_done, name=f"directory {self.prefix}", daemon=True).start()
            self.loaded.wait(wait)
        return self

    def close(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()
        self.etcd.close()

    def _read_until_done(self) -> None:
        while not self._stopped.wait(RETRY_SECONDS):
            if self._read():
                return

    def _read(self) -> bool:
        """Read every registration; start (or restart) the watch after the revision read."""
        try:
            entries, revision = self._range()
        except CoordinationError as exc:
            if not self.loaded.is_set():
                log.warning("cannot read the services' registrations from etcd yet: %s", exc)
            self.problem = str(exc)
            return False
        present = {entry.key[len(self.prefix):]: entry for entry in entries}
        with self._lock:
            for name in set(self._found) - set(present):
                if self._revisions.get(name, 0) <= revision:
                    self._apply(name, None, revision)
            for name, entry in present.items():
                self._apply(name, Registration.decode(entry.value), entry.mod_revision)
        self.problem = ""
        self.loaded.set()
        if self._watch is None and not self._stopped.is_set():
            self._watch = self.etcd.watch_prefix(self.prefix, self._heard, revision + 1, self.idle,
                                                 on_lost_history=self._lost_history)
        return True

    def _range(self) -> tuple[list[Entry], int]:
        """Every key under the prefix and the revision they were read at (a member's own copy when the
        cluster has no quorum: registrations change only with a quorum, so it is not stale for long)."""
        body = {"key": encode(self.prefix), "range_end": encode(prefix_end(self.prefix).encode("latin-1"))}
        try:
            answer = self.etcd.call("kv/range", body)
        except NoQuorum:
            answer = self.etcd.call("kv/range", {**body, "serializable": True})
        entries = [Entry(decode(kv["key"]).decode(), decode(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                         int(kv.get("lease", 0))) for kv in answer.get("kvs", [])]
        return entries, int(answer.get("header", {}).get("revision", 0))

    def _lost_history(self) -> None:
        """etcd compacted changes the watch had not seen: read everything again (the watch goes on)."""
        self._read()

    def _heard(self, key: str, entry: Entry | None, revision: int) -> None:
        name = key[len(self.prefix):]
        with self._lock:
            self._apply(name, None if entry is None else Registration.decode(entry.value), revision)

    def _apply(self, name: str, found: Registration | None, revision: int) -> None:
        """One change, unless a newer one of the same name was applied already (lock held)."""
        if revision < self._revisions.get(name, 0) or not name or "/" in name:
            return
        self._revisions[name] = revision
        before = self._found.get(name)
        if found == before:
            return
        if found is None:
            self._found.pop(name, None)
            log.info("service %s has no registration now (was %s on %s)", name, before.url if before else "-",
                     before.host if before else "-")
        else:
            self._found[name] = found
            log.info("service %s is reached at %s (host %s, pid %d)", name, found.url, found.host, found.pid)
        for listener in list(self._listeners):
            try:
                listener(name, found)
            except Exception:  # one listener's bug must not stop discovery for the others
                log.exception("directory listener failed on %s", name)


_shared: dict[tuple[tuple[str, ...], str], Directory] = {}
_shared_lock = threading.Lock()


def shared(settings: Settings, wait: float = 2.0) -> Directory:
    """This process's directory of the application's services (one per etcd cluster and prefix), started
    on first use (given ``wait`` seconds to read once): for clients that follow services as they move."""
    key = (tuple(settings.etcd), keys.services_prefix(settings))
    with _shared_lock:
        directory = _shared.get(key)
        if directory is None:
            directory = _shared[key] = Directory.for_settings(settings)
            directory.start(wait=wait)
        return directory
