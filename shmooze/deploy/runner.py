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
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shmooze.deploy import logs
from shmooze.errors import NotTheService, ShmoozeError, exception_line
from shmooze.polling import wait_until
from shmooze.settings import Settings, exposure_warning, is_loopback, own_addresses
from shmooze.system import procutil
from shmooze.system.private import OPEN_FLAGS, NotPrivate, check_private_dir, open_private, private_dir, write_private

if TYPE_CHECKING:
    from shmooze.client import ServiceClient

log = logging.getLogger(__name__)


class AlreadyRunning(ShmoozeError):
    def __init__(self, pid: int | None, lock_path: Path):
        super().__init__(f"already running (pid {pid if pid else 'unknown'}; lock {lock_path})")
        self.pid = pid


class NotRunning(ShmoozeError):
    pass


#: The longest path a Unix socket may have (``sun_path`` holds 108 bytes, the last one a NUL).
SOCKET_PATH_MAX = 107


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
        """``run_path`` from the settings, else the settings file's default folder (see
        :func:`default_run_folders`): the one where a run holds the lock, else the first."""
        configured = settings.run_path
        if configured:
            return cls(Path(configured))
        folders = default_run_folders(settings.path)
        return cls(next((folder for folder in folders if _holds_a_run(folder)), folders[0]))

    def prepare(self) -> None:
        """Create the run folder and its logs folder, 0700, or check that they are this user's alone
        (:class:`~shmooze.system.private.NotPrivate` otherwise)."""
        if len(os.fsencode(self.socket)) > SOCKET_PATH_MAX:
            raise ShmoozeError(f"the run folder {self.root} is too long a path for supervisord's socket "
                               f"({len(os.fsencode(self.socket))} bytes, at most {SOCKET_PATH_MAX}): "
                               f"set run_path to a shorter one")
        private_dir(self.root)
        private_dir(self.logs)

    #: What a run writes for itself alone, removed when it ends (a run writes them anew).
    TRANSIENT = ("supervisord.conf", "supervisord.pid", "supervisor.sock", "gateway-metrics", "address")

    @property
    def address(self) -> Path:
        """This host's address among the services' candidates, as ``shmooze run --address`` named it (for
        ``shmooze status``, which asks this host's services there)."""
        return self.root / "address"

    def clean_after_stop(self, settings: Settings) -> None:
        """Remove what the run made that no later command reads. A folder in the temp directory (the
        default when the others' paths are too long for a socket) goes whole, logs included: nothing
        there outlives the run; elsewhere the logs and the lock file stay (``shmooze logs`` after a stop)."""
        in_temp = not settings.run_path and self.root.parent == Path(tempfile.gettempdir())
        for name in (os.listdir(self.root) if in_temp and self.root.is_dir() else self.TRANSIENT):
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if in_temp:
            try:
                self.root.rmdir()
            except OSError:  # something came meanwhile: leave it
                pass


def default_run_folders(settings_path: str) -> list[Path]:
    """Where a run keeps its files when the settings name no ``run_path``, best first: a folder in
    the user's runtime folder (``$XDG_RUNTIME_DIR``, when it is this user's alone), else in the
    state folder (``$XDG_STATE_HOME``, ``~/.local/state``); the temp directory last, for when those
    paths are too long for a Unix socket (checked like the others: a folder another user made first
    is refused, never used). Each is named after the settings file's path."""
    digest = hashlib.sha1(os.path.abspath(settings_path).encode()).hexdigest()[:12]
    folders = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and _ours_alone(Path(runtime)):
        folders.append(Path(runtime) / f"shmooze-{digest}")
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    folders.append(Path(state) / "shmooze" / f"run-{digest}")
    folders.append(Path(tempfile.gettempdir()) / f"shmooze-{os.geteuid()}-{digest}")
    fitting = [folder for folder in folders if len(os.fsencode(RunPaths(folder).socket)) <= SOCKET_PATH_MAX]
    return fitting or folders[-1:]


def _ours_alone(folder: Path) -> bool:
    try:
        check_private_dir(folder)
        return True
    except (OSError, NotPrivate):
        return False


def _holds_a_run(folder: Path) -> bool:
    """Whether a run holds the lock of this folder, and the folder is this user's alone (a folder
    another user made is never taken for the run, whatever its lock says)."""
    return _ours_alone(folder) and is_locked(RunPaths(folder).lock)


# -- the single-instance guard ---------------------------------------------------------

class InstanceLock:
    """An exclusive ``flock`` on a file: the kernel drops it when its holder dies, so a crash never
    leaves a stale lock behind (the trap of pid-file locks)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)
        while True:
            fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise AlreadyRunning(holder_pid(self.path), self.path) from None
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the lock file was removed by the run that ended (a run folder in /tmp): anew
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, there = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def holder_pid(path: Path) -> int | None:
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | OPEN_FLAGS), "rb") as f:
            return int(f.read(32).strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(path: Path) -> bool:
    """Whether a live ``shmooze run`` holds the lock (never through a symbolic link)."""
    try:
        fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
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
    return settings.stop_timeout + 5


def _conf_value(text: str) -> str:
    """A value for supervisord's configuration: it expands ``%(name)s``, so ``%`` is doubled."""
    return text.replace("%", "%%")


def service_command(settings_path: str, name: str) -> str:
    """The command line of one service, quoted as supervisord splits it (shell rules)."""
    argv = [sys.executable, "-m", "shmooze", "serve", name, "--settings", settings_path]
    return _conf_value(" ".join(shlex.quote(a) for a in argv))


def service_environment(settings: Settings, name: str) -> dict[str, str]:
    """The variables the ``environment`` setting gives service ``name``'s process (and so its modules'):
    the entry ``*`` (every service), then the service's own entry over it. The framework's own variables
    (``SHMOOZE_SETTINGS``, ``PYTHONUNBUFFERED``...) cannot be named there (shmooze.registry refuses them)."""
    table = settings.environment
    return {**table.get("*", {}), **table.get(name, {})}


def _supervisord_environment(variables: dict[str, str]) -> str:
    """``environment=`` of a program: each value quoted with the quote it does not hold (supervisord splits
    the line with shlex, without escapes; the registry refuses a value holding both)."""
    pairs = []
    for name, value in variables.items():
        quote = "'" if '"' in value else '"'
        pairs.append(f"{name}={quote}{value}{quote}")
    return "environment=" + _conf_value(",".join(pairs))


def chosen_services(settings: Settings, services: list[str] | None) -> list[str]:
    """The services this host runs: those named (``gateway`` is ``wsgi``), else every port's."""
    if not services:
        return sorted(settings.ports)
    names = ["wsgi" if name == "gateway" else name for name in services]
    unknown = [name for name in names if name not in settings.ports]
    if unknown:
        raise ShmoozeError(f"no service named {unknown[0]!r} (services: {', '.join(sorted(settings.ports))})")
    return sorted(set(names))


def supervisord_conf(settings: Settings, paths: RunPaths, services: list[str] | None = None) -> str:
    """One ``[program:NAME]`` a port (or for each of ``services``): ``shmooze serve NAME`` with its
    own log file."""
    settings_path = os.path.abspath(settings.path)
    logs = _conf_value(str(paths.logs))
    lines = [
        "; written by 'shmooze run' from " + settings_path.replace("\n", " "),
        "[supervisord]",
        "nodaemon=true",
        "silent=true",  # its own log lines go to its log file, not over what `shmooze run` says
        f"logfile={logs}/supervisord.log",
        f"pidfile={_conf_value(str(paths.root / 'supervisord.pid'))}",
        f"childlogdir={logs}",
        "",
        "[unix_http_server]",
        f"file={_conf_value(str(paths.socket))}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_conf_value(str(paths.socket))}",
        "",
    ]
    names = sorted(chosen_services(settings, services), key=lambda n: (n == "wsgi", n))
    # One group: supervisord stops the programs of a group all at once, groups one after another.
    lines += [f"[group:{GROUP}]", "programs=" + ",".join(names), ""]
    for name in names:
        lines += [
            f"[program:{name}]",
            f"command={service_command(settings_path, name)}",
            f"directory={_conf_value(os.path.dirname(settings_path))}",
            # The settings path travels on the command line (quoted), not here: supervisord's
            # environment syntax has no escape for every character a path may hold.
            _supervisord_environment({"PYTHONUNBUFFERED": "1", **service_environment(settings, name)}),
            "umask=077",  # what a service writes (journal, command log, logs) is its user's alone
            "autostart=true",
            "autorestart=true",
            "startsecs=1",
            "stopsignal=TERM",
            f"stopwaitsecs={stop_wait_seconds(settings)}",
            # supervisord expands a program's log path twice (once as any value, once as a log path).
            f"stdout_logfile={_conf_value(logs)}/{name}.log",
            "redirect_stderr=true",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
            "",
        ]
    return "\n".join(lines)


# -- open files: what the settings need, in units and in ``shmooze run`` -----------------------

#: Descriptors a gateway worker needs besides its connections: listening sockets, logs, metrics files,
#: etcd, the idle pools to services.
GATEWAY_MARGIN = 1024
#: A service's besides the gateways' connections: its modules (two TCP connections, output pipes, a pidfd
#: each: about 8) for some 500 of them, logs, journal, command log.
SERVICE_MARGIN = 4096


def open_files_needed(settings: Settings, name: str) -> int:
    """Open files one process of ``name`` may need (a limit is per process, and workers inherit it).

    A gateway worker holds up to ``gateway_connections`` clients and, while their commands run, a
    connection to a service for each: twice that. A service may be waited on by every client connection
    of every gateway worker (long polls, commands): ``gateway_connections`` x ``gateway_workers``, plus
    its modules'."""
    if name == "wsgi":
        return 2 * settings.gateway_connections + GATEWAY_MARGIN
    return settings.gateway_connections * settings.gateway_workers + SERVICE_MARGIN


def raise_open_files(settings: Settings, services: list[str]) -> tuple[int, str | None]:
    """Raise this process's soft open-files limit to what ``services`` need (its children inherit it),
    up to the hard limit; the soft limit now, and what to tell the operator when the hard limit is lower."""
    import resource

    need = max(open_files_needed(settings, name) for name in services)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return soft, None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            return soft, f"open files: cannot raise the limit from {soft} to {target}: {exc}"
    if soft >= need:
        return soft, None
    return soft, (f"open files: the settings need {need} per process (gateway_connections "
                  f"{settings.gateway_connections} x gateway_workers {settings.gateway_workers}, modules, margin) "
                  f"but the hard limit is {hard}: the soft limit is {soft}; raise the hard limit "
                  f"(ulimit -Hn, LimitNOFILE=, /etc/security/limits.conf) or lower gateway_connections")


# -- systemd units, for hosts that prefer systemd to supervisord ---------------------------

def _systemd_word(text: str) -> str:
    """One word of a unit's ``ExecStart``: double-quoted, with ``%`` and ``$`` kept literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _systemd_env(name: str, value: str) -> str:
    """One ``Environment=`` assignment, double-quoted, with ``%`` kept literal."""
    text = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{text}"'


def unit_prefix(settings: Settings) -> str:
    """``shmooze-APP``: APP is the settings file's folder name, kept to safe characters."""
    import re

    raw = os.path.basename(os.path.dirname(os.path.abspath(settings.path))) or "app"
    return "shmooze-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-") or "app")


def systemd_units(settings: Settings, services: list[str] | None = None, user: str | None = None) -> dict[str, str]:
    """File name to text: one ``.service`` unit per service (``shmooze serve NAME``) and one
    ``.target`` that starts and stops them together. systemd then does supervisord's job: restart
    on exit, SIGTERM to the service (which runs its modules' ladders), SIGKILL to whatever is left
    in its cgroup after the stop timeout."""
    settings_path = os.path.abspath(settings.path)
    prefix = unit_prefix(settings)
    names = chosen_services(settings, services)
    units = {}
    for name in names:
        argv = [sys.executable, "-m", "shmooze", "serve", name, "--settings", settings_path]
        lines = [
            "# written by 'shmooze systemd-units' from " + settings_path.replace("\n", " "),
            "[Unit]",
            f"Description=shmooze {'gateway' if name == 'wsgi' else 'service ' + name} ({prefix})",
            "After=network-online.target",
            "Wants=network-online.target",
            f"PartOf={prefix}.target",
            "",
            "[Service]",
            "Type=simple",
            "ExecStart=" + " ".join(_systemd_word(a) for a in argv),
            # A path as it is (spaces and all), only systemd's specifier sign doubled.
            "WorkingDirectory=" + os.path.dirname(settings_path).replace("%", "%%"),
            f"Environment={_systemd_word('SHMOOZE_SETTINGS=' + settings_path)}",
            "Environment=PYTHONUNBUFFERED=1",
            # The settings' environment: systemd expands % specifiers (doubled here), not $ in Environment=.
            *(f"Environment={_systemd_env(k, v)}" for k, v in service_environment(settings, name).items()),
            *([f"User={user}"] if user else []),
            "Restart=always",
            "RestartSec=1",
            # soft and hard: what the settings' connections and modules need (open_files_needed)
            f"LimitNOFILE={open_files_needed(settings, name)}",
            # SIGTERM to the service alone (it stops its modules through their ladders), then
            # SIGKILL to everything left in the unit's cgroup once the stop timeout is over.
            "KillMode=mixed",
            f"TimeoutStopSec={stop_wait_seconds(settings)}",
            *(["Delegate=yes"] if name != "wsgi" else []),  # a cgroup per module below the service's
            "",
            "[Install]",
            f"WantedBy={prefix}.target",
            "",
        ]
        units[f"{prefix}-{name}.service"] = "\n".join(lines)
    units[f"{prefix}.target"] = "\n".join([
        "# written by 'shmooze systemd-units' from " + settings_path.replace("\n", " "),
        "[Unit]",
        f"Description=shmooze application {prefix} on this host",
        "Wants=" + " ".join(f"{prefix}-{name}.service" for name in names),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])
    return units


def write_systemd_units(settings: Settings, folder: str | os.PathLike[str], services: list[str] | None = None,
                        user: str | None = None) -> list[Path]:
    """Write :func:`systemd_units` into ``folder``; return the files written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in systemd_units(settings, services, user).items():
        (out / filename).write_text(text)
        written.append(out / filename)
    return written


def rpc(paths: RunPaths, timeout: float = 10.0) -> Any:
    """An XML-RPC proxy to the run's supervisord."""
    from supervisor.xmlrpc import SupervisorTransport

    if not paths.socket.exists():
        raise NotRunning(f"not running (no supervisord socket at {paths.socket})")
    check_private_dir(paths.root)  # a folder another user made holds their socket, not the run's
    transport = SupervisorTransport(None, None, f"unix://{paths.socket}")
    transport.timeout = timeout
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


# -- run, status, stop, restart --------------------------------------------------------

class PortTaken(ShmoozeError):
    """A port the settings give a service is already in use: nothing was started."""


class StartFailed(ShmoozeError):
    """A service did not come up: it exited, or did not answer within the start timeout."""


def taken_ports(settings: Settings, services: list[str] | None = None) -> list[str]:
    """One line for each port in ``ports`` (or of ``services``) that something already listens on
    (empty: all free)."""
    import socket

    problems = []
    for name in chosen_services(settings, services):
        port = settings.ports[name]
        host = settings.listen_address(name)
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # The same option gunicorn binds with: a port left in TIME_WAIT counts as free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
                continue
            except OSError as exc:
                reason = exc.strerror or str(exc)
        holders = ", ".join(procutil.describe(pid) for pid in procutil.listening_pids(int(port)))
        problems.append(f"port {port} of service {name!r} is taken ({reason})"
                        + (f" by {holders}" if holders else ""))
    return problems


def service_answers(settings: Settings, name: str, timeout: float = 2.0) -> bool:
    """Whether a service answers on its port: ``status`` for a service, the public settings for the
    gateway. A process that runs but does not answer is not up; one that answers without proving it
    holds the service key is another program on the port (:class:`NotTheService`, raised)."""
    if name != "wsgi":
        try:
            local_client(settings, name, timeout).status()
            return True
        except NotTheService:
            raise
        except ShmoozeError:
            return False
    import requests

    try:
        url = f"{settings.url('wsgi')}{settings.wsgi_prefix}settings.json"
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


class Runner:
    """``shmooze run``: supervisord in the foreground, announced only once every service answers.

    Signal handlers only record; the loop acts. The first Ctrl-C (or SIGTERM) stops every service
    gracefully (each runs its modules' ladders); a second one kills them at once (each service's
    orphan guard then ends its modules)."""

    def __init__(self, settings: Settings, conf: str | None = None, services: list[str] | None = None):
        self.settings = settings
        #: The services this host runs (``--services``; default: every one in ``ports``).
        self.services = chosen_services(settings, services)
        self.paths = RunPaths.for_settings(settings)
        self.conf = conf
        self.signals: list[int] = []
        #: Pids of the services' processes as supervisord last reported them (for the hard stop).
        self.service_pids: set[int] = set()
        #: The first pid seen for each service while starting: another one means it exited meanwhile.
        self.start_pids: dict[str, int] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def say(self, out: Any, text: str) -> None:
        out.write(f"shmooze: {text}\n")
        out.flush()

    def run(self, out: Any = sys.stdout, start_timeout: float | None = None) -> int:
        start_timeout = self.settings.start_timeout if start_timeout is None else start_timeout
        exposed = exposure_warning(self.settings)
        if exposed:
            self.say(out, f"warning: {exposed}")
        self.paths.prepare()
        files, short = raise_open_files(self.settings, self.services)
        if short:
            self.say(out, f"warning: {short}")
        else:
            log.info("open files: soft limit %s", files)
        lock = InstanceLock(self.paths.lock)
        lock.acquire()
        try:
            problems = taken_ports(self.settings, self.services)
            if problems:
                raise PortTaken("; ".join(problems) + "; nothing was started")
            conf_path = Path(self.conf) if self.conf else self.paths.conf
            if not self.conf:
                write_private(conf_path, supervisord_conf(self.settings, self.paths, self.services))
            if own_addresses():
                write_private(self.paths.address, ",".join(own_addresses()))
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._record)
            self.say(out, f"starting {', '.join(self.services)}; "
                          f"run folder {self.paths.root}, logs in {self.paths.logs}")
            # supervisord through shmooze.deploy.supervise: if this runner dies, it stops every service within
            # a few seconds (see there).
            proc = subprocess.Popen([sys.executable, "-m", "shmooze.deploy.supervise", str(os.getpid()), "-c", str(conf_path)],
                                    stdin=subprocess.DEVNULL)
            return self._supervise(proc, out, time.monotonic() + start_timeout)
        finally:
            self.paths.clean_after_stop(self.settings)  # (under the lock: no other run is using them)
            lock.release()

    def _supervise(self, proc: subprocess.Popen[bytes], out: Any, start_deadline: float) -> int:
        """The loop: announce once every service answers, stop on a failed start or a signal."""
        waiting = set(self.services)  # services not yet seen answering
        handled = 0  # signals acted on
        failed = False
        while True:
            try:
                proc.wait(0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if len(self.signals) > handled:
                handled = len(self.signals)
                if handled == 1:
                    self.say(out, "stopping every service (Ctrl-C again stops them at once)...")
                    proc.send_signal(signal.SIGTERM)
                else:
                    self.say(out, "stopping at once")
                    self._kill_now(proc)
                continue
            if handled or failed or not waiting:
                continue
            infos = self._program_infos()
            failure = self._start_failure(infos, waiting, start_deadline)
            if failure:
                self.say(out, failure)
                failed = True
                proc.send_signal(signal.SIGTERM)
                continue
            waiting = {name for name in waiting
                       if infos.get(name, {}).get("statename") != "RUNNING"
                       or not service_answers(self.settings, name, timeout=1.0)}
            if not waiting:
                url = self.url()
                self.say(out, f"running; open {url}  (Ctrl-C stops it)" if url else "running  (Ctrl-C stops it)")
        if failed:
            return 1
        if handled or proc.returncode == 0:
            return 0
        self.say(out, f"supervisord exited with status {proc.returncode}; see {self.paths.logs / 'supervisord.log'}")
        return proc.returncode if proc.returncode > 0 else 1

    def url(self) -> str | None:
        if "wsgi" not in self.services:
            return None
        return f"{self.settings.url('wsgi')}{self.settings.wsgi_prefix}"

    def _program_infos(self) -> dict[str, dict[str, Any]]:
        try:
            infos = rpc(self.paths, timeout=2).supervisor.getAllProcessInfo()
        except (OSError, NotRunning, xmlrpc.client.Error):
            return {}
        self.service_pids.update(info["pid"] for info in infos if info.get("pid"))
        return {info["name"]: info for info in infos}

    def _start_failure(self, infos: dict[str, dict[str, Any]], waiting: set[str], deadline: float) -> str | None:
        """Why the start failed, with the service's log tail; None while it may still succeed."""
        for name in sorted(waiting):
            info = infos.get(name, {})
            state = info.get("statename")
            # Any exit during the start is a broken service, not a hiccup worth supervisord's retries:
            # BACKOFF (it exited before startsecs), EXITED, or a new pid (it exited and was restarted
            # between two looks).
            pid = info.get("pid") or 0
            first = self.start_pids[name] = self.start_pids.get(name) or pid
            restarted = bool(first and pid and pid != first)
            if state in ("FATAL", "BACKOFF", "EXITED") or restarted:
                how = state if not restarted else "it exited and was restarted"
                return self._failure_text(name, f"service {name!r} failed to start ({how})")
        if time.monotonic() > deadline:
            name = sorted(waiting)[0]
            return self._failure_text(name, f"service {name!r} did not answer within its start timeout "
                                            f"({self.settings.start_timeout:g} s)")
        return None

    def _failure_text(self, name: str, headline: str) -> str:
        log_path = self.paths.logs / f"{name}.log"
        tail = logs.tail_lines(log_path, 15)
        shown = "".join(f"\n  | {line}" for line in tail)
        cause = exception_line(tail)  # first, where it is seen: a typo in a factory is one line of a traceback
        return f"{headline}{': ' + cause if cause else ''}; stopping the others. Last lines of {log_path}:{shown}"

    def _kill_now(self, proc: subprocess.Popen[bytes]) -> None:
        """Skip the graceful wait: SIGKILL every service's process group and supervisord. Each
        service's orphan guard sees its pipe close and ends that service's modules."""
        self._program_infos()
        for pid in self.service_pids:
            procutil.kill_group(pid, signal.SIGKILL)  # supervisord starts each program in its own group
        proc.kill()


def service_status(settings: Settings, name: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """A service's own ``status`` answer, asked directly on its port (None when it does not answer)."""
    from shmooze.errors import ShmoozeError as Error

    try:
        return local_client(settings, name, timeout).status()
    except Error:
        return None


def remote_status(settings: Settings, name: str) -> dict[str, Any]:
    """A service another host runs, asked where it is reached now (with etcd: where it is registered)."""
    from shmooze.client import ServiceClient

    host: str | None = settings.address(name)
    found = None
    try:
        client = ServiceClient.on_port(settings, name, settings.connect_timeout)
        found = client.status()
        host = urlsplit(client.url).hostname
    except ShmoozeError as exc:
        log.debug("status of %s: %s", name, exc)
        if settings.etcd:
            host = None  # (the settings name candidates, not where it runs)
    return {"state": "REMOTE", "pid": None, "host": host, "status": found, "answering": found is not None}


def local_client(settings: Settings, name: str, timeout: float) -> ServiceClient:
    """A client of service ``name`` as this host runs it: at its own address among its candidates in
    ``hosts`` (another candidate may be the leader), with the application's service key."""
    from shmooze import servicekey
    from shmooze.client import ServiceClient

    return ServiceClient(f"{settings.url(name, settings.reached_at(name))}/", name, timeout=timeout,
                         key=servicekey.load(settings, create=False))


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
        if not prog and name == "wsgi":
            continue  # a host that runs services only (``shmooze run --services``)
        if not prog and (settings.etcd or not is_loopback(settings.address(name))):
            # Run by another host (``shmooze run --services`` there): asked over the network.
            services[name] = remote_status(settings, name)
            continue
        entry: dict[str, Any] = {"state": prog.get("statename", "UNKNOWN"), "pid": prog.get("pid") or None}
        if prog.get("statename") == "RUNNING":
            entry["uptime"] = prog.get("now", 0) - prog.get("start", 0)
        if name != "wsgi":
            entry["status"] = service_status(settings, name)
            entry["answering"] = entry["status"] is not None
        else:
            entry["answering"] = service_answers(settings, name)
        # Two processes: the gunicorn master (``pid``, supervisord's) and its worker, which runs the service
        # and its modules (the pid of its own status, which the dashboard shows).
        entry["master_pid"] = entry["pid"]
        entry["worker_pid"] = (entry.get("status") or {}).get("pid")
        services[name] = entry
    return {"running": True, "runner_pid": holder_pid(paths.lock), "services": services}


def run_address(settings: Settings) -> str | None:
    """The ``--address`` the running ``shmooze run`` was given (None: none, or not running)."""
    try:
        return RunPaths.for_settings(settings).address.read_text().strip() or None
    except OSError:
        return None


def stopped_report(settings: Settings) -> dict[str, Any]:
    """What ``status --json`` prints when the application is not running."""
    return {"running": False, "runner_pid": None, "settings": str(settings.path), "services": {}}


def all_up(report: dict[str, Any]) -> bool:
    """Whether every service of a status report is RUNNING, answering, and reports no ``problem`` (a full
    disk: see shmooze.system.storage)."""
    return all(e["state"] in ("RUNNING", "REMOTE") and e.get("answering") and not (e.get("status") or {}).get("problem")
               for e in report["services"].values())


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
    """Restart some services (or all of them, when none are named) and return once each answers again
    (supervisord's RUNNING comes a second after the start, before the port may answer)."""
    paths = RunPaths.for_settings(settings)
    if not is_locked(paths.lock):
        raise NotRunning(f"not running (settings {settings.path})")
    server = rpc(paths, timeout=stop_wait_seconds(settings) + 30)
    # All of them: those this host runs (``shmooze run --services``), every port's by default.
    targets = names or sorted(info["name"] for info in server.supervisor.getAllProcessInfo())
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
    start_timeout = settings.start_timeout
    for name in targets:
        try:
            wait_until(partial(service_answers, settings, name, timeout=1.0), start_timeout,
                       f"{name} to answer on port {settings.ports[name]} after its restart (start_timeout); "
                       f"see its log in {paths.logs}", interval=0.05, error=ShmoozeError)
        except NotTheService:
            raise ShmoozeError(_port_thief(settings, name, paths)) from None
        leader = server.supervisor.getProcessInfo(f"{GROUP}:{name}").get("pid") or 0
        strangers = {pid for pid in procutil.listening_pids(settings.ports[name]) if _group_of(pid) != leader}
        if strangers:
            raise ShmoozeError(_port_thief(settings, name, paths, strangers))
    return targets


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _port_thief(settings: Settings, name: str, paths: RunPaths, pids: set[int] | None = None) -> str:
    """Why a restart failed: another program holds the service's port."""
    port = settings.ports[name]
    holders = pids if pids is not None else procutil.listening_pids(port)
    who = ", ".join(procutil.describe(pid) for pid in sorted(holders)) or "a process this user cannot see"
    return (f"{name} was restarted but another program holds its port {port} ({who}): it is not "
            f"{name}; stop that program, then run 'shmooze restart {name}' again (see {paths.logs})")
