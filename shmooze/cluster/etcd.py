"""One etcd cluster, reached through whichever of its members answers.

etcd3gw speaks etcd's JSON gateway (``/v3/``) to one member; :class:`Etcd` holds one such client per
member named in the ``etcd`` setting and moves on to the next when a member cannot be reached, so a
lost member costs one connect timeout once, not every call. Every call has a timeout.

Two failures are told apart, because callers act differently on them: :class:`Unreachable` (no
member answered: this host may be the one cut off) and :class:`NoQuorum` (members answer but cannot
commit: the cluster lost its majority; reads that may be stale still work with ``serializable``).
Both are :class:`CoordinationError`, a :class:`~shmooze.errors.ShmoozeError`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from shmooze.errors import SettingsError, ShmoozeError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 0.5  # a member on a live link answers a connect in microseconds
REQUEST_TIMEOUT = 2.0  # a commit that takes longer has no quorum behind it


class CoordinationError(ShmoozeError):
    """etcd could not do what was asked."""


class Unreachable(CoordinationError):
    """No member of the etcd cluster answered."""


class NoQuorum(CoordinationError):
    """Members answer but the cluster cannot commit: it has lost its majority."""


@dataclass(frozen=True)
class Entry:
    """One key's value and the revision that last changed it (for compare-and-swap)."""

    key: str
    value: bytes
    mod_revision: int
    lease: int


def encode(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def decode(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The end of the key range that holds every key starting with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode("latin-1")


def check_endpoints(endpoints: list[str]) -> list[tuple[str, str, int]]:
    """``http://host:port`` URLs as (scheme, host, port); a clear error for anything else."""
    parsed = []
    for url in endpoints:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise SettingsError(f"etcd: {url!r} is not an etcd client URL such as 'http://10.0.0.31:2379'")
        parsed.append((parts.scheme, parts.hostname, parts.port or 2379))
    return parsed


def _client_class() -> Any:
    try:
        from etcd3gw.client import Etcd3Client  # (only deployments that name etcd need it)
    except ImportError as exc:
        raise SettingsError("the 'etcd' setting needs the etcd client: pip install 'shmooze[etcd]'") from exc
    return Etcd3Client


class Etcd:
    """A client of one etcd cluster through any of its members."""

    def __init__(self, endpoints: list[str], timeout: float = REQUEST_TIMEOUT):
        if not endpoints:
            raise SettingsError("etcd: name at least one member")
        client_class = _client_class()
        self.timeout = timeout
        self.clients = [client_class(host=host, port=port, protocol=scheme, api_path="/v3/",
                                     timeout=(CONNECT_TIMEOUT, timeout))
                        for scheme, host, port in check_endpoints(endpoints)]
        self._current = 0
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # for call_all, made at its first use
        self._member_ids: dict[int, int] = {}  # each member's id, as it last said (etcd's status names its leader by id)

    def next_member(self) -> None:
        """Talk to the next member from now on (the current one stopped answering)."""
        with self._lock:
            self._current = (self._current + 1) % len(self.clients)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for client in self.clients:
            client.session.close()

    # -- one request, to whichever member answers ------------------------------------------------

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the current member, moving on when it cannot be reached."""
        with self._lock:
            start = self._current
        timed_out = False
        for step in range(len(self.clients)):
            index = (start + step) % len(self.clients)
            answer, late = self._attempt(index, path, body)
            if answer is not None:
                return answer
            timed_out = timed_out or late
        raise self._failed(path, timed_out)

    def call_all(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on every member at once and take the first answer: for a request
        any member may serve that is worth sending twice (a lease renewal), so that a member that hangs (no
        leader for a moment, while the cluster elects one) delays it by nothing."""
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(4 * len(self.clients), thread_name_prefix="etcd-all")
            pool = self._pool
        tries = [pool.submit(self._attempt, index, path, body) for index in range(len(self.clients))]
        timed_out = False
        for done in concurrent.futures.as_completed(tries):
            answer, late = done.result()  # (a refusal, CoordinationError, is raised here)
            if answer is not None:
                return answer
            timed_out = timed_out or late
        raise self._failed(path, timed_out)

    def _attempt(self, index: int, path: str, body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """One try on member ``index``: its answer, else None and whether it timed out (rather than being
        down); a request etcd refuses raises :class:`CoordinationError`."""
        from etcd3gw import exceptions

        client = self.clients[index]
        try:
            answer = client.post(client.get_url(path), json=body)
        except exceptions.ConnectionFailedError as exc:
            # refused, reset, or 503 from a member that is cut off from the leader
            log.debug("etcd member %s:%s: %s", client.host, client.port, exc)
            return None, "no leader" in str(exc) or "timed out" in str(exc)
        except exceptions.ConnectionTimeoutError as exc:
            # a connect timeout (a silent link) or a request the member could not commit in time
            log.debug("etcd member %s:%s timed out: %s", client.host, client.port, exc)
            return None, "connect" not in str(exc).lower()
        except exceptions.Etcd3Exception as exc:
            raise CoordinationError(f"etcd refused {path}: {exc}") from exc
        with self._lock:
            self._current = index
        return answer, False

    def _failed(self, path: str, timed_out: bool) -> CoordinationError:
        if timed_out:
            return NoQuorum(f"etcd cannot commit (no quorum): {path} timed out on every member that answered")
        return Unreachable(f"no etcd member answered ({', '.join(f'{c.host}:{c.port}' for c in self.clients)})")

    # -- keys --------------------------------------------------------------------------------------

    def get(self, key: str, serializable: bool = False) -> Entry | None:
        """The key's entry, None if absent. ``serializable``: this member's copy, answered without quorum."""
        found = self.range(key, None, serializable)
        return found[0] if found else None

    def get_prefix(self, prefix: str, serializable: bool = False) -> list[Entry]:
        return self.range(prefix, prefix_end(prefix), serializable)

    def range(self, key: str, end: str | None, serializable: bool = False) -> list[Entry]:
        body: dict[str, Any] = {"key": encode(key), "serializable": serializable}
        if end is not None:
            body["range_end"] = encode(end.encode("latin-1"))
        answer = self.call("kv/range", body)
        return [Entry(decode(kv["key"]).decode(), decode(kv.get("value", "")), int(kv.get("mod_revision", 0)),
                      int(kv.get("lease", 0))) for kv in answer.get("kvs", [])]

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        """Store ``value`` at ``key`` (bound to ``lease`` when not 0); the revision it made."""
        body: dict[str, Any] = {"key": encode(key), "value": encode(value)}
        if lease:
            body["lease"] = lease
        return int(self.call("kv/put", body)["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete ``key`` (every key under it with ``prefix``); how many were deleted."""
        body = {"key": encode(key)}
        if prefix:
            body["range_end"] = encode(prefix_end(key).encode("latin-1"))
        return int(self.call("kv/deleterange", body).get("deleted", 0))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> tuple[bool, dict[str, Any]]:
        """One transaction (see :func:`when`, :func:`put_op`); whether ``compare`` held, and etcd's answer."""
        answer = self.call("kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(answer.get("succeeded", False)), answer

    # -- leases ------------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        return int(self.call("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def refresh(self, lease: int) -> int:
        """Keep ``lease`` alive; the seconds it now has left (0 or less: it has expired)."""
        answer = self.call_all("lease/keepalive", {"ID": lease})
        return int(answer.get("result", answer).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End ``lease`` now: every key bound to it is deleted."""
        self.call("lease/revoke", {"ID": lease})

    # -- the quorum ----------------------------------------------------------------------------------

    def member_states(self, timeout: float = 0.5) -> list[tuple[str, int]]:
        """Each member's own state, answered without quorum: ("down", 0) when its port refuses connections
        (nothing listens), ("answers", the id of the leader it knows, 0 for none), or ("silent", 0) when it does
        not answer in ``timeout``. The members' ids are kept (a status names its leader by id)."""
        import requests

        def state(index: int) -> tuple[str, int]:
            client = self.clients[index]
            try:
                answer = client.session.post(client.get_url("maintenance/status"), json={},
                                             timeout=(min(CONNECT_TIMEOUT, timeout), timeout))
                found = answer.json() if answer.status_code == 200 else None
            except requests.ConnectionError as exc:
                return "down" if "refused" in str(exc).lower() and not isinstance(exc, requests.Timeout) else "silent", 0
            except (requests.RequestException, ValueError):
                return "silent", 0
            if not isinstance(found, dict):
                return "silent", 0
            self._member_ids[index] = int(found.get("header", {}).get("member_id", 0))
            return "answers", int(found.get("leader", 0))

        with concurrent.futures.ThreadPoolExecutor(len(self.clients), thread_name_prefix="etcd-status") as pool:
            return list(pool.map(state, range(len(self.clients))))

    def no_leader_anywhere(self, timeout: float = 0.5) -> bool:
        """Whether no member can be the cluster's leader now (see :meth:`member_states`): each is down, or
        answers that it has no leader or that its leader is a member that is down. A member that does not
        answer proves nothing, nor do the others then: it may lead a majority elsewhere (this host may be the
        one cut off), or be a leader paused that revokes, when it wakes, every lease whose renewals it missed."""
        states = self.member_states(timeout)
        down = {self._member_ids.get(index) for index, (kind, _) in enumerate(states) if kind == "down"}
        return all(kind == "down" or (kind == "answers" and (leader == 0 or leader in down)) for kind, leader in states)

    # -- watching ----------------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, on_event: Callable[[str, Entry | None, int], None],
                     start_revision: int = 0, idle: float = 5.0,
                     on_lost_history: Callable[[], None] | None = None) -> Watch:
        """Call ``on_event(key, entry or None when deleted, revision)`` for every change under ``prefix``
        from ``start_revision`` on (0: from now), in order, from a thread of its own until
        :meth:`Watch.stop`. ``on_lost_history`` is called when etcd compacted revisions the watch had
        not seen yet: the caller reads the prefix again (the watch goes on from the current revision)."""
        return Watch(self, prefix, on_event, start_revision, idle, on_lost_history)

    def stream(self, prefix: str, start_revision: int, idle: float) -> Iterator[dict[str, Any]]:
        """The raw watch stream from the current member; it ends (read timeout) after ``idle`` s quiet."""
        with self._lock:
            client = self.clients[self._current]
        create: dict[str, Any] = {"key": encode(prefix), "range_end": encode(prefix_end(prefix).encode("latin-1")),
                                  "start_revision": start_revision, "progress_notify": True}
        response = client.session.post(client.get_url("watch"), json={"create_request": create}, stream=True,
                                       timeout=(CONNECT_TIMEOUT, idle))
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            response.close()


class Watch:
    """A watch that survives members coming and going: it picks up from the last revision it saw."""

    def __init__(self, etcd: Etcd, prefix: str, on_event: Callable[[str, Entry | None, int], None],
                 start_revision: int, idle: float, on_lost_history: Callable[[], None] | None = None):
        self.etcd, self.prefix, self.on_event, self.idle = etcd, prefix, on_event, idle
        self.on_lost_history = on_lost_history
        self.next_revision = start_revision
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"etcd watch {prefix}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        import requests

        while not self.stopped.is_set():
            try:
                for chunk in self.etcd.stream(self.prefix, self.next_revision, self.idle):
                    if self.stopped.is_set():
                        return
                    self._take(chunk.get("result", {}))
            except (requests.RequestException, ValueError) as exc:
                # quiet for `idle` s (a read timeout: watch again from where we were, which also
                # proves the member still answers) or the member went away (watch through the next)
                log.debug("etcd watch %s: %s", self.prefix, exc)
                if "timed out" not in str(exc).lower() or isinstance(exc, requests.ConnectTimeout):
                    self.etcd.next_member()
                    self.stopped.wait(0.1)

    def _take(self, result: dict[str, Any]) -> None:
        revision = int(result.get("header", {}).get("revision", 0))
        if int(result.get("compact_revision", 0)) > 0:
            self.next_revision = 0  # history gone: go on from now, after the caller has read afresh
            if self.on_lost_history is not None:
                self.on_lost_history()
            return
        for event in result.get("events", []):
            kv = event["kv"]
            key = decode(kv["key"]).decode()
            mod = int(kv.get("mod_revision", revision))
            entry = None if event.get("type") == "DELETE" else Entry(
                key, decode(kv.get("value", "")), mod, int(kv.get("lease", 0)))
            self.on_event(key, entry, mod)
            self.next_revision = max(self.next_revision, mod + 1)
        if not result.get("events") and revision and self.next_revision == 0:
            self.next_revision = revision + 1


def when(key: str, target: str, result: str, value: Any) -> dict[str, Any]:
    """A transaction's compare: ``when("/k", "MOD", "EQUAL", 5)``, ``when("/k", "VALUE", "EQUAL", b"x")``."""
    field = {"MOD": "mod_revision", "CREATE": "create_revision", "VERSION": "version", "VALUE": "value",
             "LEASE": "lease"}[target]
    return {"key": encode(key), "target": target, "result": result,
            field: encode(value) if target == "VALUE" else str(value)}


def put_op(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": encode(key), "value": encode(value)}
    if lease:
        body["lease"] = lease
    return {"request_put": body}


def delete_op(key: str, range_end: str | None = None) -> dict[str, Any]:
    """Delete ``key`` (every key from it up to ``range_end``, excluded, when given: see :func:`prefix_end`)."""
    body = {"key": encode(key)}
    if range_end is not None:
        body["range_end"] = encode(range_end.encode("latin-1"))
    return {"request_delete_range": body}


def range_op(key: str) -> dict[str, Any]:
    """A transaction's read of ``key`` (in ``responses[i]["response_range"]["kvs"]``)."""
    return {"request_range": {"key": encode(key)}}
