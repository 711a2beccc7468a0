"""One leader among a service's candidate hosts, elected through etcd and fenced by its lease.

Every candidate process campaigns: it takes a lease of ``ttl`` seconds and creates the service's
registration key (:func:`shmooze.cluster.keys.service_key`) bound to it, in a transaction that holds
only while the key is absent. The one whose transaction holds is the LEADER; the others stand by
(STANDBY), watching the key, and campaign again the moment it is deleted (its lease ended: revoked by
a leader that stopped, or expired).

**Fencing.** The leader renews its lease every ``ttl / 10`` s (each renewal on a thread of its own,
sent to every member at once and taken from the first that answers, so a member that hangs delays
neither the other renewals nor this one). A renewal sent at ``t`` that succeeds proves the
lease lasts until at least ``t + ttl`` (etcd counts the TTL from when it receives the renewal), so
``t`` is a *safe moment*. With ``S`` the last safe moment:

- at ``S + 0.6 ttl`` without a newer one, the leader fences itself (:attr:`on_fence`): it stops
  answering commands that change state, and its owner stops its modules through the ladder, killing
  whatever is left by the deadline ``S + ttl - max(0.5, ttl / 10)``, before the lease can expire
  and a standby win;
- a renewal that says the lease is gone, or a journal write refused because the key is no longer
  ours (:meth:`deposed`), fences at once.

**No quorum.** At every tick while its renewals are late (the last one that succeeded was sent more
than 1.5 ticks ago), whether or not one has failed yet, the leader asks every member for its own state
(:meth:`shmooze.cluster.etcd.Etcd.no_leader_anywhere`). When every member refuses the connection (its
process is down) or answers that it has no leader, or that its leader is a member that is down, no
member leads: the moment of that question counts as a safe moment. etcd's guarantees make it one:
only etcd's leader expires a lease, through a revocation a majority commits, and a newly elected etcd
leader first renews every lease for its TTL plus the election timeout (its lessor's ``Promote``, with
lease checkpoints off: etcd's default; etcd-io/etcd#9395), so with no leader at ``P`` the next one
cannot expire the lease before ``P + ttl``. So the leader keeps its modules and keeps answering reads,
refusing what changes state with "no quorum" (503), and carries on when the quorum is back.

A member that does not answer proves nothing, nor do the others then: it may lead a majority this host
is cut off from, or it may be an etcd leader paused (or hung) that, when it wakes, finds the lease
unrenewed for longer than its TTL and proposes its revocation before it steps down; elected again once
a member is back, it commits that first (tests/test_leader.py: the standby won while the old leader,
having counted two members down as proof, still ran its modules). Members starting are silent too (an
etcd member takes connections before it serves: it serves once it has published itself through a
leader of a majority), and two of them can be that majority; a member that names a new leader proves
nothing about when it was elected: only the renewal that then succeeds counts. A refused connection is
taken for a member down: a firewall between the hosts must drop etcd's packets, not reject them (a
rejection looks like a member down and would keep a cut-off leader going).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

from shmooze.cluster.etcd import CoordinationError, Entry, Etcd, NoQuorum, decode, put_op, range_op, when
from shmooze.cluster.keys import Registration

log = logging.getLogger(__name__)

LEADER, STANDBY = "LEADER", "STANDBY"
MAX_RENEWALS_IN_FLIGHT = 4


class Timings:
    """The leader's clock, from the lease's TTL (see the module's docstring)."""

    def __init__(self, ttl: int):
        self.ttl = ttl
        self.renew_every = max(0.1, ttl / 10)
        self.fence_after = ttl * 0.6
        #: The members are asked for their state at every tick once the last renewal that succeeded is older.
        self.probe_after = self.renew_every * 1.5
        self.stop_by = ttl - max(0.5, ttl / 10)


class Leadership:
    """The election of one service among its candidates, from this process.

    ``on_elected(create_revision)`` runs (on a thread of its own) once this process leads;
    ``on_fence(reason, deadline)`` once it must stop leading: its modules must all be gone by the
    monotonic ``deadline``. Both at most once: a fenced process does not campaign again (its owner
    ends it; a fresh process stands by)."""

    def __init__(self, etcd: Etcd, watch_etcd: Etcd, key: str, registration: Registration, ttl: int,
                 on_elected: Callable[[int], None], on_fence: Callable[[str, float], None],
                 on_change: Callable[[dict[str, Any]], object] | None = None):
        self.etcd, self.watch_etcd, self.key, self.registration = etcd, watch_etcd, key, registration
        #: Called with :meth:`status` when the role, the quorum or whether etcd answers changed.
        self.on_change = on_change
        self._seen: tuple = ()
        self.timings = Timings(ttl)
        self.on_elected, self.on_fence = on_elected, on_fence
        self.role = STANDBY
        self.fenced: str | None = None  # why, once fenced
        #: The registration of the leader as last seen (this process's own while it leads).
        self.leader: Registration | None = None
        #: What etcd said last when it could not do what was asked (None: it answers).
        self.problem: str | None = None
        #: Whether etcd can commit (False: no quorum; state-changing commands are refused).
        self.quorum = True
        #: Set by the owner once the elected service is ready for changes (its journal read from etcd).
        self.serving = False
        self.create_revision = 0
        self.lease = 0
        self._safe = 0.0  # the last safe moment (monotonic; see the module's docstring)
        self._renewed = 0.0  # when the last renewal that succeeded was sent
        self._probing = False  # a probe of the members' state is under way
        self._lock = threading.Lock()
        self._vacant = threading.Event()  # the key was deleted: campaign now
        self._stopped = threading.Event()
        self._in_flight = 0
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)

    # -- what the service asks ---------------------------------------------------------------------

    def start(self) -> None:
        self._watch = self.watch_etcd.watch_prefix(self.key, self._heard, idle=max(1.0, self.timings.ttl / 2))
        self._thread.start()

    def refusal(self) -> str | None:
        """Why a command that changes state is refused here now (None: it is taken)."""
        name = self.key.rsplit("/", 1)[-1]
        if self.fenced:
            return f"{name} here is no longer the leader ({self.fenced}): it stands by; try again"
        if self.role != LEADER:
            leader = self.leader
            where = f"the leader is {leader.url} on {leader.host}" if leader else "no leader is elected yet"
            return f"{name} here is a standby: {where}"
        if not self.serving:
            return f"{name} here was just elected and is taking over (reading its journal); try again in a moment"
        if not self.quorum:
            return f"no quorum: etcd cannot commit ({self.problem}); changes are refused until a majority of " \
                   "its members is back, reads are answered"
        if self.problem:
            return f"etcd does not answer ({self.problem}): changes are refused until it does, reads are answered"
        return None

    def status(self) -> dict[str, Any]:
        leader = self.leader
        return {"role": self.role, "leader": asdict(leader) if leader else None, "serving": self.serving,
                "quorum": self.quorum,
                "etcd_problem": self.problem, "fenced": self.fenced, "lease_ttl": self.timings.ttl}

    def announce(self) -> None:
        """Call :attr:`on_change` if the role, the quorum or whether etcd answers changed since last time."""
        now = (self.role, self.serving, self.quorum, self.problem is None, self.fenced)
        if now != self._seen:
            self._seen = now
            if self.on_change is not None:
                self.on_change(self.status())

    def gauges(self) -> list:
        return [("shmooze_leader", "1 while this process is its service's elected leader, else 0 (standby)", "gauge",
                 {}, 1.0 if self.role == LEADER else 0.0),
                ("shmooze_etcd_quorum", "1 while etcd can commit, as this process last saw it", "gauge", {},
                 1.0 if self.quorum else 0.0)]

    def deposed(self, reason: str) -> None:
        """The key is not ours any more (a journal write refused for it): fence now."""
        self._fence(reason)

    def coordination_failed(self, exc: CoordinationError) -> None:
        """A write through etcd failed (the journal): what it says about the quorum, at once."""
        self._saw(exc)

    def stop(self) -> None:
        """Stop campaigning and renewing (the lease runs out, unless :meth:`resign` ends it now)."""
        self._stopped.set()
        self._vacant.set()
        if self._watch is not None:
            self._watch.stop()

    def resign(self) -> None:
        """Once this process's modules are stopped: end its lease now, so a standby takes over at once."""
        self.stop()
        if self.role == LEADER and self.lease:
            try:
                self.etcd.revoke(self.lease)
            except CoordinationError as exc:
                log.warning("could not end the lease of %s (a standby takes over once it runs out): %s", self.key, exc)

    # -- campaigning ---------------------------------------------------------------------------------

    def _heard(self, key: str, entry: Entry | None, revision: int) -> None:
        if key != self.key:
            return  # (another service whose name starts with this one's)
        if entry is None:
            self._vacant.set()
        elif self.role != LEADER:
            self.leader = Registration.decode(entry.value)

    def _run(self) -> None:
        try:
            if self._campaign():
                self._lead()
        except Exception:
            log.exception("%s: the election failed", self.key)
            self._fence("the election failed (see the log)")

    def _campaign(self) -> bool:
        """Campaign until elected (True) or stopped (False)."""
        ttl = self.timings.ttl
        while not self._stopped.is_set():
            self._vacant.clear()
            sent = time.monotonic()
            try:
                lease = self.etcd.grant(ttl)
                won, answer = self.etcd.txn([when(self.key, "CREATE", "EQUAL", 0)],
                                            [put_op(self.key, self.registration.encode(), lease)],
                                            [range_op(self.key)])
            except CoordinationError as exc:
                self._saw(exc)
                self._vacant.wait(self.timings.renew_every * 5)
                continue
            self.problem, self.quorum = None, True
            if won:
                with self._lock:
                    self.role, self.lease, self._safe, self._renewed = LEADER, lease, sent, sent
                    self.create_revision = int(answer["header"]["revision"])
                    self.leader = self.registration
                log.info("%s: elected leader (lease %x of %d s, revision %d)", self.key, lease, ttl,
                         self.create_revision)
                self.announce()
                threading.Thread(target=self.on_elected, args=(self.create_revision,), name="elected",
                                 daemon=True).start()
                # the members' ids while they answer: a member that later names a leader that is down proves that
                # no one leads only if that leader's id is known
                threading.Thread(target=self.etcd.member_states, name="etcd members", daemon=True).start()
                return True
            self.leader, held_by = _holder(answer)
            self.announce()
            # An earlier attempt of ours that failed but committed (a timeout after the commit) holds the key
            # under a lease nobody renews: end that one too rather than wait it out.
            mine = [lease, held_by] if self.leader == self.registration and held_by else [lease]
            try:
                for ended in mine:
                    self.etcd.revoke(ended)
            except CoordinationError:
                pass  # it runs out on its own
            # Campaign again when the key goes (the watch), or after a while (a watch that missed it).
            self._vacant.wait(max(1.0, ttl / 2))
        return False

    def _saw(self, exc: CoordinationError) -> None:
        self.problem = str(exc)
        self.quorum = not isinstance(exc, NoQuorum) and self.quorum
        self.announce()

    # -- leading ---------------------------------------------------------------------------------------

    def _lead(self) -> None:
        timings = self.timings
        while not self._stopped.wait(timings.renew_every) and not self.fenced:
            now = time.monotonic()
            with self._lock:
                late = now - self._safe
                start = self._in_flight < MAX_RENEWALS_IN_FLIGHT
                if start:
                    self._in_flight += 1
                # renewals late (the one sent a tick ago unanswered): ask the members at every tick, so the last
                # safe moment is as late as their answers allow, however long the renewals take to fail
                probe = now - self._renewed > timings.probe_after and not self._probing
                self._probing = self._probing or probe
            if late > timings.fence_after:
                self._fence(f"its lease could not be renewed for {late:.1f} s "
                            f"({self.problem or 'no renewal answered'})")
                return
            if start:
                threading.Thread(target=self._renew, name="renew", daemon=True).start()
            if probe:
                threading.Thread(target=self._probe, name="quorum probe", daemon=True).start()

    def _renew(self) -> None:
        sent = time.monotonic()
        try:
            left = self.etcd.refresh(self.lease)
        except CoordinationError as exc:
            self._saw(exc)
            return
        finally:
            with self._lock:
                self._in_flight -= 1
        if left <= 0:
            self._fence("its lease expired")
            return
        with self._lock:
            self._safe = max(self._safe, sent)
            self._renewed = max(self._renewed, sent)
        self.problem, self.quorum = None, True
        self.announce()

    def _probe(self) -> None:
        """Ask every member for its own state: a moment when no member leads is a safe one."""
        probed = time.monotonic()
        try:
            if self.etcd.no_leader_anywhere():  # the next leader renews every lease first: as good as renewed
                with self._lock:
                    self._safe = max(self._safe, probed)
                self.quorum = False
                self.announce()
        finally:
            with self._lock:
                self._probing = False

    def _fence(self, reason: str) -> None:
        with self._lock:
            if self.fenced is not None:
                return
            self.fenced = reason
            was_leader = self.role == LEADER
            self.role = STANDBY
            deadline = self._safe + self.timings.stop_by
        self.stop()
        self.announce()
        log.warning("%s: fenced: %s; its modules stop by the deadline (%.1f s from now)", self.key, reason,
                    deadline - time.monotonic())
        if was_leader:
            self.on_fence(reason, deadline)


def _holder(answer: dict[str, Any]) -> tuple[Registration | None, int]:
    """The registration a failed campaign's transaction read (the leader's), and its lease."""
    for response in answer.get("responses", []):
        for kv in response.get("response_range", {}).get("kvs", []):
            return Registration.decode(decode(kv.get("value", ""))), int(kv.get("lease", 0))
    return None, 0


def host_name() -> str:
    return socket.gethostname()
