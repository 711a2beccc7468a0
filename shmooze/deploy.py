"""Deployment: every service of an application as its own daemon under supervisord.

``shmooze run`` writes a supervisord configuration from the settings (one
program a port), holds the single-instance lock, runs supervisord in the
foreground and stops everything on Ctrl-C. ``status``, ``stop`` and ``restart``
talk to that supervisord through its XML-RPC socket.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shmooze.errors import ShmoozeError
from shmooze.settings import Settings

log = logging.getLogger(__name__)


class AlreadyRunning(ShmoozeError):
    def __init__(self, pid: int | None, lock_path: Path):
        super().__init__(f"already running (pid {pid if pid else 'unknown'}; lock {lock_path})")
        self.pid = pid


class NotRunning(ShmoozeError):
    pass


@dataclass(frozen=True)
class RunPaths:
    """Where one application's run keeps its files."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "shmooze.lock"

    @property
    def conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @classmethod
    def for_settings(cls, settings: Settings) -> RunPaths:
        """``run_path`` from the settings, else a folder named after the settings file's path."""
        configured = settings.get("run_path")
        if configured:
            return cls(Path(configured))
        digest = hashlib.sha1(os.path.abspath(settings.path).encode()).hexdigest()[:12]
        return cls(Path(tempfile.gettempdir()) / f"shmooze-{os.getuid()}-{digest}")


# -- the single-instance guard ---------------------------------------------------------

class InstanceLock:
    """An exclusive ``flock`` on a file: the kernel drops it when its holder dies, so a crash never
    leaves a stale lock behind (the trap of pid-file locks)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(holder_pid(self.path), self.path) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def holder_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(path: Path) -> bool:
    """Whether a live ``shmooze run`` holds the lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# -- the supervisord configuration -----------------------------------------------------

#: The supervisord group that holds every service of the application.
GROUP = "shmooze"


def stop_wait_seconds(settings: Settings) -> int:
    """How long supervisord waits for a service to stop: its ladders plus a margin."""
    return int(settings.get("stop_timeout", 15)) + 5


def supervisord_conf(settings: Settings, paths: RunPaths) -> str:
    """One ``[program:NAME]`` a port: ``shmooze serve NAME`` with its own log file."""
    settings_path = os.path.abspath(settings.path)
    lines = [
        "; written by 'shmooze run' from " + settings_path,
        "[supervisord]",
        "nodaemon=true",
        f"logfile={paths.logs / 'supervisord.log'}",
        f"pidfile={paths.root / 'supervisord.pid'}",
        f"childlogdir={paths.logs}",
        "",
        "[unix_http_server]",
        f"file={paths.socket}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{paths.socket}",
        "",
    ]
    env = f'PYTHONUNBUFFERED="1",SHMOOZE_SETTINGS="{settings_path}"'
    names = sorted(settings.ports, key=lambda n: (n == "wsgi", n))
    # One group: supervisord stops the programs of a group all at once, groups one after another.
    lines += [f"[group:{GROUP}]", "programs=" + ",".join(names), ""]
    for name in names:
        lines += [
            f"[program:{name}]",
            f"command={sys.executable} -m shmooze serve {name} --settings {settings_path}",
            f"directory={os.path.dirname(settings_path)}",
            f"environment={env}",
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            "stopsignal=TERM",
            f"stopwaitsecs={stop_wait_seconds(settings)}",
            f"stdout_logfile={paths.logs / (name + '.log')}",
            "redirect_stderr=true",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
            "",
        ]
    return "\n".join(lines)


def rpc(paths: RunPaths, timeout: float = 10.0) -> Any:
    """An XML-RPC proxy to the run's supervisord."""
    from supervisor.xmlrpc import SupervisorTransport

    if not paths.socket.exists():
        raise NotRunning(f"not running (no supervisord socket at {paths.socket})")
    transport = SupervisorTransport(None, None, f"unix://{paths.socket}")
    transport.timeout = timeout  # type: ignore[attr-defined]
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


# -- run, status, stop, restart --------------------------------------------------------

class Runner:
    """``shmooze run``: supervisord in the foreground. Signal handlers only record; the loop acts."""

    def __init__(self, settings: Settings, conf: str | None = None):
        self.settings = settings
        self.paths = RunPaths.for_settings(settings)
        self.conf = conf
        self.signalled: int | None = None

    def _record(self, signum: int, frame: Any) -> None:
        self.signalled = signum

    def run(self, out: Any = sys.stdout, ready_timeout: float = 60.0) -> int:
        lock = InstanceLock(self.paths.lock)
        lock.acquire()
        try:
            self.paths.logs.mkdir(parents=True, exist_ok=True)
            conf_path = Path(self.conf) if self.conf else self.paths.conf
            if not self.conf:
                conf_path.write_text(supervisord_conf(self.settings, self.paths))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._record)
            # This process runs no threads, so preexec_fn is safe here: if the runner is killed,
            # supervisord gets SIGTERM and stops every service through its ladder.
            proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf_path)],
                                    stdin=subprocess.DEVNULL, preexec_fn=_term_with_parent)
            url = f"http://127.0.0.1:{self.settings.ports['wsgi']}{self.settings.wsgi_prefix}" \
                if "wsgi" in self.settings.ports else None
            announced = False
            deadline = time.monotonic() + ready_timeout
            stopping = False
            while True:
                try:
                    proc.wait(0.1)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if self.signalled is not None and not stopping:
                    out.write("shmooze: stopping every service...\n")
                    out.flush()
                    proc.send_signal(signal.SIGTERM)
                    stopping = True
                if not announced and url and time.monotonic() < deadline and self._all_running() \
                        and _port_open(self.settings.ports["wsgi"]):
                    out.write(f"shmooze: running; open {url}  (Ctrl-C stops it; logs in {self.paths.logs})\n")
                    out.flush()
                    announced = True
            return 0 if stopping or proc.returncode == 0 else proc.returncode
        finally:
            lock.release()


    def _all_running(self) -> bool:
        """Whether supervisord has every program RUNNING (past its startsecs)."""
        try:
            infos = rpc(self.paths, timeout=2).supervisor.getAllProcessInfo()
        except (OSError, NotRunning, xmlrpc.client.Error):
            return False
        return bool(infos) and all(info["statename"] == "RUNNING" for info in infos)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _term_with_parent() -> None:
    from shmooze.procutil import PR_SET_PDEATHSIG, _prctl

    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def service_status(settings: Settings, name: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """A service's own ``status`` answer, asked directly on its port (None when it does not answer)."""
    from shmooze.client import ServiceClient
    from shmooze.errors import ShmoozeError as Error

    try:
        return ServiceClient(f"http://127.0.0.1:{settings.ports[name]}/", name, timeout=timeout).status()
    except Error:
        return None


def status(settings: Settings) -> dict[str, Any]:
    """Every program as supervisord sees it, and each service's own status."""
    paths = RunPaths.for_settings(settings)
    if not is_locked(paths.lock):
        raise NotRunning(f"not running (settings {settings.path})")
    server = rpc(paths)
    programs = {info["name"]: info for info in server.supervisor.getAllProcessInfo()}
    services = {}
    for name in sorted(settings.ports):
        prog = programs.get(name, {})
        entry: dict[str, Any] = {"state": prog.get("statename", "UNKNOWN"), "pid": prog.get("pid") or None}
        if prog.get("statename") == "RUNNING":
            entry["uptime"] = prog.get("now", 0) - prog.get("start", 0)
        if name != "wsgi":
            entry["status"] = service_status(settings, name)
        services[name] = entry
    return {"runner_pid": holder_pid(paths.lock), "services": services}


def format_status(report: dict[str, Any]) -> str:
    rows = [("SERVICE", "STATE", "PID", "UPTIME", "MODULES")]
    module_rows = [("  MODULE", "TYPE", "STATE", "PID", "UPTIME / ENDED BY")]
    for name, entry in report["services"].items():
        st = entry.get("status") or {}
        modules = st.get("modules", [])
        rows.append((name, entry["state"], str(entry["pid"] or "-"), _duration(entry.get("uptime")),
                     str(len(modules)) if "modules" in st else "-"))
        for m in modules:
            module_rows.append((f"  {name}/{m['uid']}", m["type"], m["state"], str(m.get("pid") or "-"),
                                _duration(m.get("uptime"))))
        for m in st.get("ended", [])[-5:]:
            module_rows.append((f"  {name}/{m['uid']}", m["type"], "ended", str(m.get("pid") or "-"),
                                str(m.get("ended_by"))))
    return _table(rows) + ("\n\n" + _table(module_rows) if len(module_rows) > 1 else "") + _containment_lines(report)


def _containment_lines(report: dict[str, Any]) -> str:
    """Which containment each module host uses (see shmooze.containment)."""
    lines = []
    for name, entry in report["services"].items():
        info = (entry.get("status") or {}).get("containment")
        if info:
            how = f"a cgroup v2 per module ({info['path']})" if info["kind"] == "cgroup" else \
                f"process group + environment sweep ({info.get('why') or 'no cgroup v2'})"
            lines.append(f"{name}: containment: {how}")
    return "\n\n" + "\n".join(lines) if lines else ""


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def stop(settings: Settings, timeout: float = 60.0) -> int | None:
    """Ask supervisord to shut down (every service runs its ladders) and wait for the run to end."""
    paths = RunPaths.for_settings(settings)
    if not is_locked(paths.lock):
        raise NotRunning(f"not running (settings {settings.path})")
    pid = holder_pid(paths.lock)
    rpc(paths).supervisor.shutdown()
    deadline = time.monotonic() + timeout
    while is_locked(paths.lock):
        if time.monotonic() > deadline:
            raise ShmoozeError(f"the run (pid {pid}) did not stop within {timeout:g} s")
        time.sleep(0.05)
    return pid


def restart(settings: Settings, names: list[str]) -> list[str]:
    """Restart some services (or all of them, when none are named)."""
    paths = RunPaths.for_settings(settings)
    if not is_locked(paths.lock):
        raise NotRunning(f"not running (settings {settings.path})")
    server = rpc(paths, timeout=stop_wait_seconds(settings) + 30)
    targets = names or sorted(settings.ports)
    for name in targets:
        if name not in settings.ports:
            raise ShmoozeError(f"no service named {name!r} (services: {', '.join(sorted(settings.ports))})")
    for name in targets:
        try:
            server.supervisor.stopProcess(f"{GROUP}:{name}", True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise ShmoozeError(f"cannot stop {name}: {fault.faultString}") from None
        server.supervisor.startProcess(f"{GROUP}:{name}", True)
    return targets
