"""A service on one of its candidate hosts, with etcd: it serves only while elected.

:class:`Candidacy` runs a service's part in its election (:mod:`shmooze.cluster.leadership`). The
process answers from the start (status, reads), on standby: commands that change state are refused
(503) and a queue or pool starts no module. Once elected, it reads its journal from etcd
(:mod:`shmooze.hosting.etcdjournal`), whose every write then holds only while it leads, and starts
(restores its modules). Fenced, it stops its modules through the ladder, kills what is left at the
deadline (before its lease can expire and a standby win), and ends the process; the serving
process's master starts a fresh one, which stands by and campaigns again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, cast

from shmooze.cluster import keys
from shmooze.cluster.etcd import CoordinationError, Etcd
from shmooze.cluster.leadership import Leadership, host_name
from shmooze.hosting.etcdjournal import EtcdJournal, fence_on
from shmooze.hosting.host import ModuleHost
from shmooze.service import Service

if TYPE_CHECKING:
    from shmooze.hosting.journal import Journal
    from shmooze.settings import Settings

log = logging.getLogger(__name__)


class Candidacy:
    def __init__(self, service: Service, settings: Settings, name: str):
        self.service, self.settings, self.name = service, settings, name
        self.etcd = Etcd(settings.etcd, timeout=min(2.0, settings.etcd_lease_ttl / 4))
        self.journal_etcd = Etcd(settings.etcd)
        self.watch_etcd = Etcd(settings.etcd)
        self.key = keys.service_key(settings, name)
        registration = keys.Registration.now(settings.url(name, settings.reached_at(name)), host_name(), os.getpid())
        self.leadership = Leadership(self.etcd, self.watch_etcd, self.key, registration, settings.etcd_lease_ttl,
                                     self._elected, self._fence,
                                     lambda status: service.changed("role", **status))
        service.leadership = self.leadership
        self._stopping = threading.Event()
        if isinstance(service, ModuleHost):
            service.journal_path = None  # its journal is in etcd, opened once elected

    def start(self) -> None:
        """Campaign (the service starts once elected)."""
        log.info("%s: campaigning as %s (etcd %s)", self.name, self.leadership.registration.url,
                 ", ".join(self.settings.etcd))
        self.leadership.start()

    def stop(self) -> None:
        """The process stops: the service's modules through the ladder, then the lease ended (a standby
        takes over at once)."""
        self._stopping.set()
        self.service.stop()
        self.leadership.resign()
        for client in (self.etcd, self.journal_etcd, self.watch_etcd):
            client.close()

    def _elected(self, create_revision: int) -> None:
        service = self.service
        if isinstance(service, ModuleHost) and self.settings.journal:
            journal = None
            while journal is None and not self._stopping.is_set() and not self.leadership.fenced:
                try:
                    journal = EtcdJournal(self.journal_etcd, keys.journal_prefix(self.settings, self.name), self.name,
                                          fence_on(self.key, create_revision), self.leadership.deposed,
                                          self.leadership.coordination_failed)
                except CoordinationError as exc:
                    log.warning("%s: cannot read its journal from etcd yet: %s", self.name, exc)
                    self.leadership.coordination_failed(exc)
                    time.sleep(0.5)
            if journal is None:
                return
            service.journal = cast("Journal", journal)  # (the same interface as the file journal)
        if self._stopping.is_set() or self.leadership.fenced:
            return
        service.start()  # a module host restores its journal's modules now (commands wait for them)
        self.leadership.serving = True
        self.leadership.announce()

    def _fence(self, reason: str, deadline: float) -> None:
        """Stop the modules by ``deadline`` (the ladder, then SIGKILL), then end this process."""
        service = self.service
        if isinstance(service, ModuleHost) and service.journal is not None:
            journal, service.journal = service.journal, None  # nothing more is written, nor waited for
            cast(EtcdJournal, journal).abandon()
        stopping = threading.Thread(target=service.stop, name="fence", daemon=True)
        stopping.start()
        stopping.join(max(0.0, deadline - time.monotonic()))
        if stopping.is_alive() and isinstance(service, ModuleHost):
            left = service.table.live() + service.table.stopping()
            log.error("%s: %d module(s) still running at the fencing deadline: killed", self.name, len(left))
            for module in left:
                if module.pid:
                    try:
                        os.killpg(module.pid, signal.SIGKILL)  # (its own process group)
                    except OSError:
                        pass
            stopping.join(5.0)
        log.warning("%s: fenced (%s): modules stopped; this process ends and a fresh one stands by", self.name, reason)
        logging.shutdown()
        os._exit(0)  # (the master starts a fresh worker: a standby)
