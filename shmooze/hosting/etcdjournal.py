"""The state journal in etcd (the ``etcd`` setting): what a new leader on another host restores.

The same records as the file journal (:mod:`shmooze.hosting.journal`: ``add``, ``rm``, ``order``,
``params``), under ``journal/NAME/`` (:func:`shmooze.cluster.keys.journal_prefix`):

- ``head``: ``{"gen": G, "seq": S, "chunks": K}``, the snapshot in force: generation ``G`` in ``K``
  chunks, holding every change up to batch ``S``;
- ``snap/G/I``: chunk ``I`` of snapshot ``G``, a JSON list of module entries, in order;
- ``log/N``: batch ``N`` (``N`` > ``S``), a JSON list of records, written by one group commit.

Every write is one transaction that holds only while the service's registration key is still the one
this leader created (its ``create_revision``): a deposed leader can write nothing, and learns so
(:attr:`EtcdJournal.on_deposed`). Requests stay well under etcd's 1.5 MiB limit: a batch is split
into requests of at most ``CHUNK`` bytes, a snapshot into chunks of that size. Compaction writes a
new snapshot (its chunks, then the head) and deletes every batch and the older snapshot in the
head's transaction, after ``compact_after`` batches or whenever a write failed (the whole state is
then written, as the file journal does on a full disk). Commands wait for their batch's commit
(group commit, :class:`shmooze.hosting.batchwriter.BatchWriter`): acknowledged means committed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

from shmooze.cluster.etcd import CoordinationError, Etcd, delete_op, prefix_end, put_op, when
from shmooze.hosting.batchwriter import BatchWriter, WriteFailed
from shmooze.hosting.journal import _SYNC, Entry, Records, _State

log = logging.getLogger(__name__)

CHUNK = 512 * 1024  # bytes of records per request (etcd takes 1.5 MiB by default)


def read(etcd: Etcd, prefix: str) -> tuple[list[Entry], int, int, str | None]:
    """The journal's modules in order, its generation and last batch number, and what was wrong."""
    kvs = {e.key: e.value for e in etcd.get_prefix(prefix)}
    problems = []
    head: dict[str, Any] = {"gen": 0, "seq": 0, "chunks": 0}
    if prefix + "head" in kvs:
        try:
            head = json.loads(kvs[prefix + "head"])
        except ValueError:
            problems.append("its head is unreadable")
    state = _State()
    for index in range(int(head.get("chunks", 0))):
        raw = kvs.get(f"{prefix}snap/{int(head['gen']):012d}/{index:06d}")
        try:
            for entry in json.loads(raw or b""):
                state.entries[entry["uid"]] = entry
        except (ValueError, KeyError, TypeError):
            problems.append(f"snapshot chunk {index} is missing or unreadable")
    seq = int(head.get("seq", 0))
    batches = sorted((int(k[len(prefix) + 4:]), v) for k, v in kvs.items() if k.startswith(prefix + "log/"))
    for number, raw in batches:
        if number <= seq:
            continue  # (written before the snapshot, left by a compaction that was cut short)
        try:
            for record in json.loads(raw):
                state.apply(record)
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append(f"batch {number} is unreadable")
        seq = number
    return list(state.entries.values()), int(head.get("gen", 0)), seq, "; ".join(problems) or None


class EtcdJournal(Records):
    """The journal of one service in etcd, with the interface of :class:`shmooze.hosting.journal.Journal`.

    ``fence``: the compares every write carries (the registration key is still this leader's);
    ``on_deposed(reason)`` when a write is refused for it; ``on_failure(exc)`` when etcd failed one."""

    def __init__(self, etcd: Etcd, prefix: str, service: str, fence: list[dict[str, Any]],
                 on_deposed: Callable[[str], None], on_failure: Callable[[CoordinationError], None],
                 *, params_interval: float = 0.5, compact_after: int = 200):
        self.etcd, self.prefix, self.service, self.fence = etcd, prefix, service, fence
        self.on_deposed, self.on_failure = on_deposed, on_failure
        self.path = f"etcd:{prefix}"
        self.params_interval, self.compact_after = params_interval, compact_after
        entries, self._gen, self._seq, problem = read(etcd, prefix)
        if problem is not None:
            log.warning("%s journal in etcd %s: %s; restoring %d module(s) from what was readable", service,
                        prefix, problem, len(entries))
        #: What the journal held when this leader was elected: the modules to restore, in order.
        self.recovered: list[Entry] = [dict(e) for e in entries]
        self.problem = problem
        self._state = _State()
        self._state.entries = {e["uid"]: e for e in entries}
        self._batches = 0  # batches since the snapshot (read back ones not counted: the first compaction folds them)
        self._rewrite_due = problem is not None
        self._dirty: dict[str, Callable[[], dict[str, Any]]] = {}
        self._params_due = 0.0
        self.writes = 0
        self.compactions = 0
        self.failures = 0
        self._abandoned = False
        self._writer = BatchWriter(f"{service}-etcd-journal", self._write_batch, timeout=self._idle_time)

    def flush(self, timeout: float = 5.0) -> bool:
        self._writer.put(_SYNC)
        return self._writer.flush(timeout) and not self._rewrite_due

    def close(self) -> None:
        self._writer.close()

    def abandon(self) -> None:
        """This leader is fenced: write nothing more (what is pending fails at once, no etcd call waited for)."""
        self._abandoned = True

    def status(self) -> dict[str, Any]:
        return {"path": self.path, "modules": len(self._state.entries), "pending": self._writer.pending,
                "writes": self.writes, "compactions": self.compactions, "recovered": len(self.recovered),
                "problem": self.problem, "failures": self.failures, "generation": self._gen, "batch": self._seq}

    # -- writing (the writer's lock held) ------------------------------------------------------------

    def _idle_time(self) -> float:
        if self._rewrite_due:
            return 0.5  # try again until etcd takes it
        return max(0.0, self._params_due - time.monotonic()) if self._dirty else self.params_interval

    def _write_batch(self, items: list[Any], last: bool) -> None:
        if self._abandoned:
            raise WriteFailed(f"not kept: {self.service} here is no longer the leader")
        records = [self._record(item) for item in items if item is not _SYNC]
        for record in records:
            self._state.apply(record)  # (the state holds every change, written or not: see the rewrite)
        if self._dirty and (last or len(records) < len(items) or time.monotonic() >= self._params_due):
            for uid in list(self._dirty):
                current = self._dirty.pop(uid)
                if uid in self._state.entries:  # (one whose add has not come yet is in its add's entry)
                    record = {"op": "params", "uid": uid, "parameters": current()}
                    self._state.apply(record)
                    records.append(record)
            self._params_due = time.monotonic() + self.params_interval
        if not records and not self._rewrite_due:
            return
        try:
            if self._rewrite_due or self._batches >= self.compact_after:
                self._snapshot()
            else:
                for part in _parts(records):
                    self._commit([put_op(f"{self.prefix}log/{self._seq + 1:016d}", part)])
                    self._seq += 1
                    self._batches += 1
                    self.writes += 1
        except CoordinationError as exc:
            self._rewrite_due = True  # the whole state at the next try (a batch may have half-committed)
            self.failures += 1
            self.on_failure(exc)
            raise WriteFailed(f"not kept in etcd: {exc}") from None

    @staticmethod
    def _record(item: Any) -> dict[str, Any]:
        op = item[0]
        if op == "add":
            entry = item[1]
            if item[2] is not None:
                entry["parameters"] = item[2]()
            return {"op": "add", "entry": entry}
        return {"op": "rm" if op == "rm" else "order", "uids": item[1]}

    def _commit(self, ops: list[dict[str, Any]]) -> None:
        """One transaction, held only while this leader's registration stands."""
        held, _ = self.etcd.txn(self.fence, ops)
        if not held:
            reason = "a journal write was refused: the service's registration is no longer this leader's"
            self.on_deposed(reason)
            raise WriteFailed(f"not kept: {self.service} here is no longer the leader ({reason})")

    def _snapshot(self) -> None:
        """Write the state as a new snapshot and drop every batch and the older snapshot, in the head's
        transaction (the chunks go first, in transactions of their own when they are many)."""
        gen = self._gen + 1
        chunks = list(_parts(list(self._state.entries.values())))
        snap = f"{self.prefix}snap/{gen:012d}/"
        puts = [put_op(f"{snap}{index:06d}", chunk) for index, chunk in enumerate(chunks)]
        head = json.dumps({"gen": gen, "seq": self._seq, "chunks": len(chunks), "time": time.time()})
        drop = [delete_op(f"{self.prefix}log/", prefix_end(f"{self.prefix}log/")),
                delete_op(f"{self.prefix}snap/", snap)]  # every older generation (and batch) is in this one
        if sum(len(c) for c in chunks) <= CHUNK:
            self._commit(puts + [put_op(self.prefix + "head", head)] + drop)
        else:
            for put in puts:
                self._commit([put])
            self._commit([put_op(self.prefix + "head", head)] + drop)
        self._gen, self._batches, self._rewrite_due = gen, 0, False
        self.compactions += 1
        self.writes += 1


def _parts(items: list[Any]) -> list[bytes]:
    """``items`` as JSON lists of at most about :data:`CHUNK` bytes each (one item may be more), in order;
    at least one (empty) list."""
    parts: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for item in items:
        raw = json.dumps(item, separators=(",", ":")).encode()
        if current and size + len(raw) > CHUNK:
            parts.append(b"[" + b",".join(current) + b"]")
            current, size = [], 0
        current.append(raw)
        size += len(raw) + 1
    parts.append(b"[" + b",".join(current) + b"]")
    return parts


def fence_on(key: str, create_revision: int) -> list[dict[str, Any]]:
    """The compare of every journal write: the registration ``key`` is the one created at ``create_revision``."""
    return [when(key, "CREATE", "EQUAL", create_revision)]
