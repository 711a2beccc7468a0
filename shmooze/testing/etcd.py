"""A real etcd cluster for tests: members on loopback ports, or one per simulated host.

Each member is Debian's ``etcd`` started in its own session with a data folder of its own; the
cluster is healthy when a write commits. Members can be stopped and started again (with their data,
as a host that comes back) and everything is ended by pid.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from shmooze.polling import wait_until
from shmooze.testing.netns import Hosts
from shmooze.testing.processes import Process

HEARTBEAT_MS = 100
ELECTION_MS = 1000  # etcd's defaults: a lost leader is replaced in about a second


def quiet_port() -> int:
    """A free loopback port below the ephemeral range: the members' own connections to each other
    take ephemeral ports, and could take one chosen there before its member binds it."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def why_not() -> str | None:
    """Why an etcd cluster cannot be started here (None: it can)."""
    if not shutil.which("etcd"):
        return "no 'etcd' command (Debian's etcd-server package)"
    try:
        import etcd3gw  # noqa: F401
    except ImportError:
        return "no etcd client: pip install 'shmooze[etcd]'"
    return None


class EtcdCluster:
    """``members`` etcd members: on 127.0.0.1 with free ports, or on ``hosts`` (one simulated host each,
    the standard ports 2379 and 2380 on its address)."""

    def __init__(self, members: int = 3, hosts: Hosts | None = None, on: list[str] | None = None):
        self.hosts = hosts
        self.on = on or []
        if hosts is not None and len(self.on) != members:
            raise ValueError("name one simulated host per member")
        self.folder = Path(tempfile.mkdtemp(prefix="shmooze-etcd-"))
        self.names = [f"m{i}" for i in range(members)]
        if hosts is None:
            self.client_urls = [f"http://127.0.0.1:{quiet_port()}" for _ in self.names]
            self.peer_urls = [f"http://127.0.0.1:{quiet_port()}" for _ in self.names]
        else:
            addresses = [hosts.addresses[host] for host in self.on]
            self.client_urls = [f"http://{address}:2379" for address in addresses]
            self.peer_urls = [f"http://{address}:2380" for address in addresses]
        self.procs: dict[int, Process] = {}

    @property
    def endpoints(self) -> list[str]:
        """The client URLs, for the ``etcd`` setting."""
        return list(self.client_urls)

    def argv(self, index: int) -> list[str]:
        cluster = ",".join(f"{name}={url}" for name, url in zip(self.names, self.peer_urls))
        argv = ["etcd", "--name", self.names[index], "--data-dir", str(self.folder / self.names[index]),
                "--listen-client-urls", self.client_urls[index], "--advertise-client-urls", self.client_urls[index],
                "--listen-peer-urls", self.peer_urls[index], "--initial-advertise-peer-urls", self.peer_urls[index],
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.folder.name,
                "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS)]
        if self.hosts is not None:
            return self.hosts.argv(self.on[index], argv)
        return argv

    def start(self, timeout: float = 30.0) -> None:
        """Start every member and return once the cluster commits a write."""
        for index in range(len(self.names)):
            self.start_member(index)
        self.wait_healthy(timeout)

    def start_member(self, index: int) -> None:
        """Start member ``index`` (again: with the data it had)."""
        self.procs[index] = Process(self.argv(index), log_path=self.folder / f"{self.names[index]}.log",
                                    name=f"etcd {self.names[index]}")

    def stop_member(self, index: int, sig: int = signal.SIGKILL) -> None:
        """End member ``index`` (SIGKILL by default: a host lost, not one shut down)."""
        proc = self.procs.pop(index)
        proc.stop(sig)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        if self.hosts is not None:  # members on simulated hosts are reached from inside one of them only
            from concurrent.futures import ThreadPoolExecutor

            from shmooze.testing.netns import enter

            inside = self.hosts.ns(self.on[min(self.procs)])
            with ThreadPoolExecutor(1, initializer=enter, initargs=(inside,)) as pool:
                return pool.submit(self._wait_healthy, timeout).result()
        return self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        from shmooze.cluster.etcd import CoordinationError, Etcd

        client = Etcd([self.client_urls[i] for i in sorted(self.procs)])
        try:
            def committed() -> bool:
                for index, proc in self.procs.items():
                    if proc.exited():
                        raise AssertionError(f"etcd {self.names[index]} exited:\n{proc.log()[-2000:]}")
                try:
                    client.put("/shmooze-test/health", str(time.monotonic()))
                except CoordinationError:
                    return False
                return True
            wait_until(committed, timeout, "the etcd cluster to commit a write", error=AssertionError)
        finally:
            client.close()

    def stop(self) -> None:
        """End every member by pid (failing when one leaves a process behind) and remove the data."""
        failure: AssertionError | None = None
        for index in sorted(self.procs):
            try:
                self.stop_member(index, signal.SIGTERM)
            except AssertionError as exc:
                failure = failure or exc
        shutil.rmtree(self.folder, ignore_errors=True)
        if failure is not None:
            raise failure
