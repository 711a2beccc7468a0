"""The etcd client (shmooze.cluster.etcd) against a real cluster of three members on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from shmooze.cluster.etcd import Entry, Etcd, NoQuorum, Unreachable, delete_op, put_op, when
from shmooze.errors import SettingsError
from shmooze.polling import wait_until
from shmooze.testing import etcd as etcd_kit
from shmooze.testing.processes import free_port

pytestmark = pytest.mark.skipif(etcd_kit.why_not() is not None, reason=str(etcd_kit.why_not()))

# ``cluster``: three members on loopback (tests/conftest.py)


def test_keys_leases_and_transactions(cluster) -> None:
    etcd = Etcd(cluster.endpoints)
    try:
        etcd.delete("/t/kv/", prefix=True)
        first = etcd.put("/t/kv/a", "1")
        entry = etcd.get("/t/kv/a")
        assert entry == Entry("/t/kv/a", b"1", first, 0)
        etcd.put("/t/kv/b", b"\x00\xff")
        assert [e.key for e in etcd.get_prefix("/t/kv/")] == ["/t/kv/a", "/t/kv/b"]
        # compare-and-swap: holds at the revision read, fails once another write moved it
        ok, _ = etcd.txn([when("/t/kv/a", "MOD", "EQUAL", first)], [put_op("/t/kv/a", "2")])
        assert ok and etcd.get("/t/kv/a").value == b"2"
        ok, _ = etcd.txn([when("/t/kv/a", "MOD", "EQUAL", first)], [delete_op("/t/kv/a")])
        assert not ok and etcd.get("/t/kv/a") is not None
        # a key bound to a lease goes with it
        lease = etcd.grant(5)
        etcd.put("/t/kv/leased", "x", lease=lease)
        assert etcd.get("/t/kv/leased").lease == lease
        assert 0 < etcd.refresh(lease) <= 5
        etcd.revoke(lease)
        assert etcd.get("/t/kv/leased") is None
        assert etcd.refresh(lease) <= 0
    finally:
        etcd.close()


def test_a_watch_sees_every_change_in_order_across_a_member_lost(cluster) -> None:
    etcd = Etcd(cluster.endpoints)
    seen: list[tuple[str, bytes | None]] = []
    lock = threading.Lock()

    def heard(key: str, entry: Entry | None, revision: int) -> None:
        with lock:
            seen.append((key, entry.value if entry else None))

    start = etcd.put("/t/w/start", "0") + 1
    watch = etcd.watch_prefix("/t/w/", heard, start_revision=start, idle=1.0)
    try:
        etcd.put("/t/w/a", "1")
        etcd.delete("/t/w/a")
        wait_until(lambda: len(seen) == 2, 10, "two events")
        # the member the watch streams from goes away: it picks up from the next, from where it was
        cluster.stop_member(etcd.clients.index(etcd.clients[0]))
        writer = Etcd(cluster.endpoints[1:])
        writer.put("/t/w/b", "2")
        wait_until(lambda: len(seen) == 3, 15, "the event after the member was lost")
        assert seen == [("/t/w/a", b"1"), ("/t/w/a", None), ("/t/w/b", b"2")]
        writer.close()
    finally:
        watch.stop()
        etcd.close()
        if 0 not in cluster.procs:
            cluster.start_member(0)
            cluster.wait_healthy()


def committed(etcd: Etcd, key: str, value: str) -> bool:
    """Whether a put of ``value`` went through (False: etcd had no quorum for it yet)."""
    try:
        etcd.put(key, value)
    except NoQuorum:
        return False
    return True


def read_alone(etcd: Etcd, key: str) -> bytes | None:
    """A member's own copy of ``key`` (a serializable read, no quorum needed); None when it did not answer."""
    try:
        return etcd.get(key, serializable=True).value
    except NoQuorum:
        return None


def test_no_quorum_and_unreachable_are_told_apart(cluster) -> None:
    etcd = Etcd(cluster.endpoints)  # 2 s: a new etcd leader is elected within it when the old one is lost
    try:
        etcd.put("/t/q/a", "1")
        cluster.stop_member(1)
        # One member lost: the two left commit, once they have a leader (when the lost one led, after an
        # election, about a second; longer when a member restarted by the test before is still catching up).
        wait_until(lambda: committed(etcd, "/t/q/a", "2"), 15, "a write with one member of three lost")
        cluster.stop_member(2)
        with pytest.raises(NoQuorum, match="no quorum"):
            etcd.put("/t/q/a", "3")
        # this member's copy can still be read (bounded: one read timed out once, on a loaded run, while
        # the member left alone was still campaigning)
        assert wait_until(lambda: read_alone(etcd, "/t/q/a"), 15, "a read of the member left alone") == b"2"
        cluster.start_member(1)
        cluster.start_member(2)
        cluster.wait_healthy()
        etcd.put("/t/q/a", "4")
    finally:
        etcd.close()
        stopped = [index for index in (1, 2) if index not in cluster.procs]
        for index in stopped:  # (a failure above leaves the module's next tests a whole cluster)
            cluster.start_member(index)
        if stopped:
            cluster.wait_healthy()
    nobody = Etcd([f"http://127.0.0.1:{free_port()}"], timeout=1.0)
    with pytest.raises(Unreachable, match="no etcd member answered"):
        nobody.get("/x")


def test_a_lease_is_renewed_through_any_member_while_one_hangs(cluster) -> None:
    """A renewal goes to every member at once (``call_all``): a member that hangs (a follower frozen here
    with SIGSTOP, named first so that it is the one tried first) costs it nothing, where one member after
    the other would first wait out the hanging one's whole timeout."""
    follower = next(index for index, url in enumerate(cluster.endpoints) if not leads(url))
    urls = [cluster.endpoints[follower]] + [u for i, u in enumerate(cluster.endpoints) if i != follower]
    etcd = Etcd(urls, timeout=5.0)
    lease = etcd.grant(10)
    frozen = cluster.procs[follower].pid
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert 0 < etcd.refresh(lease) <= 10
        took = time.monotonic() - started
        assert took < 4.5, f"the renewal waited {took:.1f} s: the hanging member's timeout is 5 s"
    finally:
        os.kill(frozen, signal.SIGCONT)
        cluster.wait_healthy()
        etcd.revoke(lease)
        etcd.close()


def leads(url: str) -> bool:
    """Whether the member at ``url`` is the etcd cluster's leader (from its own status)."""
    status = requests.post(f"{url}/v3/maintenance/status", json={}, timeout=5).json()
    return status["leader"] == status["header"]["member_id"]


def test_settings_errors_are_clear() -> None:
    with pytest.raises(SettingsError, match="not an etcd client URL"):
        Etcd(["10.0.0.1:2379"])
    with pytest.raises(SettingsError, match="at least one member"):
        Etcd([])
