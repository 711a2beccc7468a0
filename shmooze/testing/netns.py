"""Simulated hosts: one network namespace per host, joined by a bridge, to test an application
spread over several machines on one (a service host, gateway hosts, a browser's host).

The test makes every namespace itself, with private addresses that exist only inside them (the
test's own namespace is never given one), and :meth:`Hosts.remove` tears everything down, ending
by pid whatever the test started in them. Root only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import Iterable

SUBNET = "10.213.77"  # a /24 that exists only inside the test's namespaces
CLONE_NEWNET = 0x40000000
MODULE_UID = b"SHMOOZE_MODULE_UID="  # (shmooze.system.containment.MODULE_VAR, in every module's environment)


def why_not() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "no 'ip' command (iproute2)"
    probe = f"shmzprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def enter(namespace: str) -> None:
    """Move the calling thread's networking into ``namespace`` (and that of the threads it starts
    from then on): a test's or benchmark's own probe on a simulated host."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
    finally:
        os.close(fd)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """Namespaces named ``shz<pid>-<host>``, each with one veth on the switch namespace's bridge."""

    def __init__(self, hosts: dict[str, int]):
        self.tag = f"shz{os.getpid() % 100000}"
        self.switch = f"{self.tag}-sw"
        self.addresses = {name: f"{SUBNET}.{last}" for name, last in hosts.items()}
        self.made: list[str] = []
        self.veth: dict[str, str] = {}

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def create(self) -> None:
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for index, (host, address) in enumerate(self.addresses.items()):
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.made.append(ns)
            inside, port = f"eth{index}", f"p{index}"
            _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            self.veth[host] = inside

    def link(self, host: str, up: bool) -> None:
        """Bring a host's one link down (it vanishes from the network, silently) or up again."""
        _ip("-n", self.ns(host), "link", "set", self.veth[host], "up" if up else "down")

    def argv(self, host: str, argv: Iterable[str]) -> list[str]:
        """``argv`` run inside the host (``ip netns exec`` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def module_uids(self, hosts: Iterable[str]) -> dict[str, set[str]]:
        """Which modules run on each of ``hosts`` now: the uid of every module process (by its
        environment) whose network namespace is the host's (orphans included)."""
        inodes = {os.stat(f"/var/run/netns/{self.ns(host)}").st_ino: host for host in hosts}
        found: dict[str, set[str]] = {host: set() for host in inodes.values()}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                host = inodes.get(os.stat(f"/proc/{entry.name}/ns/net").st_ino)
                if host is None:
                    continue
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            uid = next((v[len(MODULE_UID):].decode() for v in environ if v.startswith(MODULE_UID)), None)
            if uid:
                found[host].add(uid)
        return found

    def pids(self) -> list[int]:
        found = []
        for ns in self.made:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            found += [int(p) for p in out.split() if p.isdigit()]
        return found

    def remove(self) -> None:
        """Kill (by pid) anything still running in the namespaces, then delete them (and their links)."""
        for pid in self.pids():
            if pid == os.getpid():
                continue  # a benchmark measures from inside one of them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()
