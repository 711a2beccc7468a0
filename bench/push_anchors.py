"""The servers the push benchmark measures side by side: shmooze's gateway and its three anchors.

Each is an :class:`Anchor`: a port and WebSocket path its watchers connect to, the processes whose
CPU and memory are the server's, a latency window (:meth:`Anchor.phase`: stamps flow while a fleet
records their arrivals) and a restart (stopped by its pid, started again on the same port).

- :class:`Gateway`: shmooze (a ``stamp`` module sets a parameter; module -> queue -> gateway -> watchers);
- :class:`StampServer` ``websockets``: bench/push_broadcast_floor.py, a plain `websockets` broadcast;
- :class:`StampServer` ``fan-out``: bench/push_fanout_floor.py, one loop, one pre-framed message, one
  ``send`` per socket (the least any sender spends);
- :class:`Nchan`: nginx with nchan (bench/push_nchan.py), stamps posted to its HTTP publisher.

Every anchor sends the change message the gateway sent (same size, same shape, its own ``time.time()``
as the stamp), to the same kind of watchers (bench/push_wire.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import bench_argv, child_env, free_port, wait_until
from bench.push_fleet import SUBSCRIBE, RemoteFleet, run_window
from bench.push_nchan import PUB_PATH, SUB_PATH, Nginx
from bench.push_stack import MachineMeter, MiniStack
from bench.push_wire import Fleet
from shmooze.testing import port_open

#: a window starts this long after its stamps (the module playing, the first stamps flowing) ...
LEAD_S = 0.5
#: ... and they go on this long after it (a stamp sent at its end is counted)
TAIL_S = 0.2
#: how long a window then waits for stamps sent in it still on their way to some watcher
LATE_S = 4.0


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def rss_of(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def client_procs(fleet: Fleet | RemoteFleet) -> list[psutil.Process]:
    return [psutil.Process(fleet.pid if isinstance(fleet, RemoteFleet) else os.getpid())]


class Anchor:
    """A server under measure (see the module's doc)."""

    key = ""
    label = ""
    path = "/"
    subscribe = False  # whether a watcher sends the gateway's subscribe message after its handshake

    port: int

    def processes(self) -> list[psutil.Process]:
        raise NotImplementedError

    def fleet(self) -> Fleet:
        return Fleet(self.port, path=self.path, subscribe=SUBSCRIBE if self.subscribe else None)

    def remote_fleet(self, n: int) -> RemoteFleet:
        return RemoteFleet(self.port, n, self.subscribe, self.path)

    def stamping(self, interval: float, seconds: float) -> Any:
        """Start stamps every ``interval`` s for ``seconds`` s (from now); return what :meth:`stamped` ends."""
        raise NotImplementedError

    def stamped(self, handle: Any) -> None:
        raise NotImplementedError

    def phase(self, fleet: Fleet | RemoteFleet, seconds: float, interval: float) -> dict[str, Any]:
        """One latency window of ``seconds`` (stamps from :data:`LEAD_S` before it to :data:`TAIL_S` after
        it, stragglers awaited up to :data:`LATE_S`), with the server's CPU, this bench's client's CPU and
        how busy the rest of the machine was."""
        handle = self.stamping(interval, seconds + LEAD_S + TAIL_S)
        try:
            start = time.time() + LEAD_S
            end = start + seconds
            server, me = self.processes(), client_procs(fleet)
            cpu0 = (cpu_of(server), cpu_of(me), time.monotonic())
            meter = MachineMeter()
            out = run_window(fleet, start, end, LEAD_S + seconds + TAIL_S, LATE_S)
            machine = meter.read()
            cpu1 = (cpu_of(server), cpu_of(me), time.monotonic())
        finally:
            self.stamped(handle)
        wall = cpu1[2] - cpu0[2]
        out["machine"] = machine
        out["server_cpu_s"] = cpu1[0] - cpu0[0]
        out["cpu_core_share"] = {"server": (cpu1[0] - cpu0[0]) / wall, "bench_client": (cpu1[1] - cpu0[1]) / wall}
        out["server_cpu_ms_per_event"] = (cpu1[0] - cpu0[0]) * 1000 / max(1, out.get("stamps_in_run", 0))
        return out

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def restart(self, fleet: RemoteFleet, seconds: float) -> dict[str, Any]:
        """Stop the server by its pid and start it again on the same port while ``fleet`` reconnects
        every watcher it loses; seconds from the new server's start until all are subscribed again."""
        fleet.arm_rejoin(seconds)
        t0 = time.monotonic()
        stop_error = None
        try:
            self.stop()
        except AssertionError as exc:  # it needed SIGKILL (the test kit's stop says so, and killed it)
            stop_error = str(exc)
        t1 = time.monotonic()
        self.start()
        t2 = time.monotonic()
        out = fleet.rejoined(seconds)
        out.update(stop_s=t1 - t0, listening_s=t2 - t1, stop_error=stop_error)
        done = out["subscribed"] == out["watchers"] and out["lost"] >= out["watchers"]
        out["resubscribed_s"] = (out["last_subscribed"] - t1) if done else None
        out["outage_s"] = (out["last_subscribed"] - out["first_lost"]) if done else None
        return out

    def close(self) -> None:
        self.stop()


class Gateway(Anchor):
    """shmooze: the gateway of a :class:`MiniStack`, stamps from a ``stamp`` module in its queue."""

    key = "shmooze"
    label = "shmooze"
    path = "/ws"
    subscribe = True

    def __init__(self, stack: MiniStack):
        self.stack = stack
        self.port = stack.ports["wsgi"]

    def processes(self) -> list[psutil.Process]:
        """The gateway's processes: its arbiter and workers."""
        try:
            main = psutil.Process(self.stack.procs["wsgi"].pid)
            return [main, *main.children(recursive=True)]
        except (psutil.Error, KeyError):
            return []

    def stamping(self, interval: float, seconds: float) -> Any:
        uid = self.stack.call("queue", "add", type="stamp", args={"interval": interval})["uid"]
        return uid

    def stamped(self, handle: Any) -> None:
        self.stack.call("queue", "rm", uids=[handle])

    def phase(self, fleet: Fleet | RemoteFleet, seconds: float, interval: float) -> dict[str, Any]:
        service = psutil.Process(self.stack.worker_pid("queue"))
        cpu0 = cpu_of([service])
        out = super().phase(fleet, seconds, interval)
        out["cpu_core_share"]["queue_service"] = (cpu_of([service]) - cpu0) / out["machine"]["wall_s"]
        return out

    def stop(self) -> None:
        self.stack.stop_gateway()

    def start(self) -> None:
        self.stack.start_gateway()

    def close(self) -> None:
        pass  # the stack stops it


class StampServer(Anchor):
    """A floor server (a ``bench.NAME`` module taking ``PORT SAMPLE_FILE``) that stamps itself on command."""

    def __init__(self, key: str, label: str, module: str, sample: str):
        self.key, self.label, self.module = key, label, module
        self.dir = Path(tempfile.mkdtemp(prefix=f"shmooze-push-{key}-"))
        (self.dir / "sample.json").write_text(sample)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(bench_argv(self.module, str(self.port), str(self.dir / "sample.json")),
                                     env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.dir / "stderr.log", "ab"), start_new_session=True)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"{self.label} did not start: {(self.dir / 'stderr.log').read_text()[-1000:]}")

    def processes(self) -> list[psutil.Process]:
        try:
            return [psutil.Process(self.proc.pid)] if self.proc else []
        except psutil.Error:
            return []

    def stamping(self, interval: float, seconds: float) -> Any:
        self.proc.stdin.write(f"stamp {interval} {seconds}\n".encode())
        self.proc.stdin.flush()
        return self.proc

    def stamped(self, handle: Any) -> None:
        if not handle.stdout.readline().startswith(b"done"):
            raise RuntimeError(f"{self.label} did not finish its window")

    def stop(self) -> None:
        """SIGTERM by its pid (a restart as a service manager does it: connections closed by the kernel)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdin.close()
        proc.stdout.close()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nchan(Anchor):
    """nginx with nchan (:class:`bench.push_nchan.Nginx`) and its publisher process (stamps posted over HTTP)."""

    key = "nchan"
    label = "nchan in nginx"
    path = SUB_PATH

    def __init__(self, sample: str, workers: int, connections: int):
        self.dir = Path(tempfile.mkdtemp(prefix="shmooze-push-nchan-"))
        (self.dir / "sample.json").write_text(sample)
        self.port = free_port()
        self.nginx = Nginx(self.port, workers, self.dir, connections)
        self.start()
        self.publisher = subprocess.Popen(bench_argv("push_nchan", str(self.port), str(self.dir / "sample.json")),
                                          env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=open(self.dir / "publisher.log", "ab"), start_new_session=True)
        if self.publisher.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the nchan publisher did not start: {(self.dir / 'publisher.log').read_text()}")

    def start(self) -> None:
        self.nginx.start()
        wait_until(lambda: port_open(self.port) or self.nginx.proc.poll() is not None, 20, f"nginx on port {self.port}")
        if not port_open(self.port):
            raise RuntimeError(f"nginx did not start:\n{self.nginx.log_tail()}")

    def stop(self) -> None:
        self.nginx.stop()

    def processes(self) -> list[psutil.Process]:
        return self.nginx.processes()

    def stamping(self, interval: float, seconds: float) -> Any:
        self.publisher.stdin.write(f"stamp {interval} {seconds}\n".encode())
        self.publisher.stdin.flush()
        return self.publisher

    def stamped(self, handle: Any) -> None:
        if not handle.stdout.readline().startswith(b"done"):
            raise RuntimeError(f"the nchan publisher did not finish its window ({PUB_PATH})")

    def close(self) -> None:
        try:
            self.publisher.stdin.close()
            self.publisher.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.publisher.kill()
            self.publisher.wait(5)
        self.publisher.stdout.close()
        self.nginx.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
