"""A small stack for bench/push_bench.py and bench/soak.py: a gateway plus the services they name.

Each process is ``python -m shmooze serve NAME --settings PATH`` in its own session, started with
:class:`common.Proc` and stopped by its pid (then any descendant it left behind, by pid).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import PYTHON, Client, Managed, Proc, child_env, free_port

log = logging.getLogger("bench.stack")


def raise_nofile(want: int = 20000) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (at most ``want``); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class MiniStack(Managed):
    """The gateway ("wsgi") and the given services, started on enter and stopped (by pid) on exit."""

    def __init__(self, services: dict[str, str], prefix: str, extra: dict[str, Any] | None = None,
                 start_timeout: float = 60.0):
        self.services = services
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.ports = {"wsgi": free_port(), **{name: free_port() for name in services}}
        self.settings: dict[str, Any] = {"ports": self.ports, "services": services, "public": ["ports"],
                                         "log_database_path": str(self.dir / "log.db"), **(extra or {})}
        self.settings_path = self.dir / "settings.json"
        self.settings_path.write_text(json.dumps(self.settings, indent=2))
        self.start_timeout = start_timeout
        self.procs: dict[str, Proc] = {}
        self.failed = False


    def _spawn(self, name: str) -> Proc:
        env = child_env()
        env.pop("SHMOOZE_SETTINGS", None)
        argv = [PYTHON, "-m", "shmooze", "serve", name, "--settings", str(self.settings_path)]
        # (appended to: a restarted gateway's log follows its predecessor's)
        log_path = self.dir / f"{name}.log"
        previous = log_path.read_bytes() if log_path.exists() else b""
        proc = Proc(name, argv, env=env, log_path=log_path, cwd=str(self.dir))
        if previous:
            (self.dir / f"{name}.before-restart.log").write_bytes(previous)
        return proc

    def start(self) -> None:
        for name in [*self.services, "wsgi"]:
            self.procs[name] = self._spawn(name)
        for name, proc in self.procs.items():
            proc.wait_port(self.ports[name], self.start_timeout)
        for name in self.services:  # services boot their I/O thread and orphan guard on first use
            self.call(name, "status")
        log.info("stack up in %s: ports %s", self.dir, self.ports)

    def stop_gateway(self) -> None:
        """Stop the gateway by its pid (SIGTERM, as a service manager's restart does)."""
        proc = self.procs.pop("wsgi", None)
        if proc is not None:
            proc.stop()

    def start_gateway(self) -> None:
        """Start the gateway again on its port; return once it listens."""
        self.procs["wsgi"] = self._spawn("wsgi")
        self.procs["wsgi"].wait_port(self.ports["wsgi"], self.start_timeout)

    def stop_order(self) -> list[str]:
        """The gateway first, then the services (and floors)."""
        return ["wsgi", *self.services]

    # -- views ---------------------------------------------------------------------------

    def call(self, service: str, cmd: str, /, **args: Any) -> Any:
        """One command straight to a service (not through the gateway)."""
        client = Client(self.ports[service], timeout=30)
        try:
            return client.call(cmd, **args)
        finally:
            client.close()

    def worker_pid(self, service: str) -> int:
        """The worker process that holds a service's state (from its ``status``)."""
        return int(self.call(service, "status")["pid"])

    def gateway_workers(self) -> list[psutil.Process]:
        """The gateway's gunicorn worker processes."""
        try:
            return psutil.Process(self.procs["wsgi"].pid).children()
        except psutil.Error:
            return []

    def log_tail(self, name: str, chars: int = 3000) -> str:
        proc = self.procs.get(name)
        return proc.log_tail(chars) if proc else ""


def reap_own_descendants(grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every descendant of this process still running (each by its pid)."""
    try:
        kids = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return []
    alive = [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]
    for kid in alive:
        try:
            os.kill(kid.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    _, left = psutil.wait_procs(alive, timeout=grace)
    for kid in left:
        try:
            os.kill(kid.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    time.sleep(0)
    return [k.pid for k in alive]


def _family_cpu() -> float:
    """CPU seconds of this process and every descendant, reaped children included."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _busy(t: Any) -> float:
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


class MachineMeter:
    """How busy the machine was during a phase, and how much of that was not this benchmark.

    The machine is shared (2 cores): other sessions' tests and browsers can take the CPU and
    stretch every latency measured here. ``others_cores`` says how much they took.
    """

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.sys0 = psutil.cpu_times()
        self.ours0 = _family_cpu()

    def read(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self.t0)
        sys1 = psutil.cpu_times()
        busy = _busy(sys1) - _busy(self.sys0)
        steal = getattr(sys1, "steal", 0.0) - getattr(self.sys0, "steal", 0.0)
        ours = _family_cpu() - self.ours0
        return {"wall_s": round(wall, 2), "cores": psutil.cpu_count() or 0, "machine_busy_cores": busy / wall,
                "ours_cores": ours / wall, "others_cores": max(0.0, (busy - ours) / wall),
                "steal_cores": steal / wall, "loadavg_1m": os.getloadavg()[0]}


def describe_load(m: dict[str, float]) -> str:
    return (f"machine {m['machine_busy_cores']:.2f} of {m['cores']} cores busy, of which other processes "
            f"{m['others_cores']:.2f}; load average {m['loadavg_1m']:.1f}")
