"""Serving: run a service or the gateway as its own daemon under gunicorn.

A stateful service (one that holds modules) runs in exactly one gunicorn worker
process with a pool of threads (``gthread``, or by default its subclass
:class:`shmooze.http.loopworker.LoopWorker`, which answers quick commands on its
connection loop): one process, so one copy of the state; threads, so a slow
command never holds up the others. The port itself is
the single-instance guard: a second copy cannot bind it.

The gateway holds no state; it runs several ``gevent`` workers, so thousands of
waiting WebSocket watchers cost greenlets, not threads.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from shmooze.errors import SettingsError
from shmooze.settings import SERVICE_WORKERS, Settings, exposure_warning
from shmooze.system import procutil

if TYPE_CHECKING:  # imported when a service is built: the gateway's master process needs neither
    from shmooze.hosting.host import ModuleHost
    from shmooze.service import Service

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s [%(service)s %(process)d] %(name)s: %(message)s"


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


def configure_logging(service: str, level: str | int = "INFO") -> None:
    """One line per event on stderr, each naming the service and pid."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_ServiceFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def import_object(spec: str) -> Any:
    """Import ``package.module:attribute``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SettingsError(f"service {spec!r} must be written 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError(f"cannot import {module_name!r} for service {spec!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SettingsError(f"{module_name!r} has no {attr!r} (service {spec!r})") from None
    return obj


def service_spec(settings: Settings, name: str) -> Any:
    """``services[name]``: what builds the service (checked before gunicorn starts, for a clear error)."""
    spec = settings.services.get(name)
    if spec is None:
        raise SettingsError(f"{settings.path}: no entry for {name!r} in 'services' "
                            f"(services: {', '.join(sorted(settings.services)) or 'none'})")
    return spec


def build_service(settings: Settings, name: str) -> Service:
    """Build the service object named in settings: ``services[name]`` is a class or factory of a
    :class:`~shmooze.service.Service`, or a service object."""
    from shmooze.hosting.host import ModuleHost
    from shmooze.service import Service

    spec = service_spec(settings, name)
    target = import_object(spec) if isinstance(spec, str) else spec
    service = target() if callable(target) and not isinstance(target, Service) else target
    if not isinstance(service, Service):
        raise SettingsError(f"services[{name!r}] built {type(service).__name__}, not a shmooze Service "
                            "(a subclass of shmooze.service.Service)")
    _configure_service(service, settings, name)
    if isinstance(service, ModuleHost):
        _configure_host(service, settings, name)
    return service


def _configure_service(service: Service, settings: Settings, name: str) -> None:
    """What every service takes from the settings: its name, command slots, event limits."""
    if service.name == "service":  # the base's name: the settings name it
        service.name = name
    service.limit_commands(settings.service_threads)  # the threads beyond stay free for reads
    service.events.max_bytes = settings.events_max_bytes
    service.events.max_answer_bytes = settings.changes_max_bytes


def _configure_host(host: ModuleHost, settings: Settings, name: str) -> None:
    """What a queue or pool takes from the settings: line limit, containment, command log, journal, output."""
    host.max_line = settings.max_line_bytes
    # What the file does not set stays as the service's code made it.
    if settings.given("containment"):
        host.containment_mode = settings.containment  # auto, cgroup or process-group
    if settings.given("check_module_peers"):
        host.check_peers = settings.check_module_peers
    if settings.given("module_limits"):
        host.limits_mode = settings.module_limits
    _configure_module_types(settings, host)
    _configure_places(settings, host, name)
    if settings.given("durability"):
        host.durability = settings.durability  # when a command is answered: see journal
    log_path = settings.log_database_path
    if log_path and host.command_log is None:
        from shmooze.hosting.cmdlog import CommandLog

        host.command_log = CommandLog(log_path, name, max_age=settings.log_max_age_days * 86400,
                                      max_bytes=settings.log_max_bytes, durability=host.durability,
                                      health=host.storage)
    if settings.log_module_updates:
        host.log_module_updates = True
    if settings.original_command_log and log_path and host.original_log is None:
        from shmooze.hosting.originallog import OriginalLogWriter

        host.original_log = OriginalLogWriter(log_path, host.original_kind, max_age=settings.log_max_age_days * 86400,
                                              max_bytes=settings.log_max_bytes)
    elif settings.original_command_log and not log_path:
        log.warning("%s writes no original command log: original_command_log needs log_database_path", name)
    if host.journal is None and not host.journal_path:
        from shmooze.hosting.journal import journal_file

        path = journal_file(settings, name)
        if path:
            host.journal_path = path  # opened (read, then restored from) when the service starts
        else:
            log.info("%s keeps no journal: its modules are not restored after a restart", name)
    _keep_module_output(settings, name, host.ops)


def _configure_module_types(settings: Settings, host: ModuleHost) -> None:
    """``module_types``: restart policies and limits per module type name, over what the code declares
    (for every queue or pool with a module or background type of that name)."""
    from shmooze.moduletype import with_settings

    table = settings.module_types
    changed: list[tuple[dict, str, Any]] = []
    for types in host.type_tables().values():
        for name in sorted(set(types) & set(table)):
            try:
                changed.append((types, name, with_settings(types[name], table[name])))
            except ValueError as exc:
                raise SettingsError(f"{settings.path}: {exc}") from None
    for types, name, mtype in changed:  # (all or nothing)
        types[name] = mtype


def _configure_places(settings: Settings, host: ModuleHost, name: str) -> None:
    """This host's address among the service's candidates; every type bound to a ``place`` must name one."""
    host.places.here = settings.own_address(name)
    candidates = settings.candidates(name)
    for types in host.type_tables().values():
        for mtype in types.values():
            if mtype.place is not None and mtype.place not in candidates:
                raise SettingsError(f"{settings.path}: module type {mtype.name!r} of {name!r} is bound to the host "
                                    f"{mtype.place!r} (its place), which is not among the candidates of {name!r} in "
                                    f"'hosts' ({', '.join(candidates) or 'none'})")


def _keep_module_output(settings: Settings, name: str, ops: Any) -> None:
    """Module output files go to ``module_output_path``/SERVICE, else the run folder's logs/modules/SERVICE."""
    from pathlib import Path

    from shmooze.deploy.runner import RunPaths

    folder = settings.module_output_path
    if folder:
        ops.output_folder = Path(folder) / name
    elif settings.path and settings.path != "<memory>":
        ops.output_folder = RunPaths.for_settings(settings).logs / "modules" / name
    ops.output_max_bytes = settings.module_output_max_bytes
    ops.output_backups = settings.module_output_backups


def _gather_gateway_metrics(settings: Settings) -> tuple[dict[str, Any], Path | None]:
    """Gateway workers count their push figures in files of one folder, summed at each scrape
    (prometheus_client's multiprocess mode); the folder is emptied at each start. Also the folder to
    remove when the gateway stops (None: ``metrics_path``, the user's own, stays)."""
    import shutil
    import tempfile

    from shmooze.deploy.runner import RunPaths
    from shmooze.system.private import private_dir

    if settings.metrics_path:
        folder = Path(settings.metrics_path)
    elif settings.path and settings.path != "<memory>":
        folder = RunPaths.for_settings(settings).root / "gateway-metrics"
    else:
        folder = Path(tempfile.mkdtemp(prefix="shmooze-gateway-metrics-"))
    shutil.rmtree(folder, ignore_errors=True)
    private_dir(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)

    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    return {"child_exit": child_exit}, None if settings.metrics_path else folder


class _GunicornApp:
    """Runs one WSGI app under gunicorn's arbiter, configured in code."""

    def __new__(cls, loader: Callable[[], Any], options: dict[str, Any]) -> Any:
        from gunicorn.app.base import BaseApplication

        from shmooze.http import onewrite

        onewrite.install()

        class App(BaseApplication):
            def load_config(self) -> None:
                for key, value in options.items():
                    if key in self.cfg.settings:  # settings newer gunicorns add are skipped on older ones
                        self.cfg.set(key, value)

            def load(self) -> Any:
                return loader()

        return App()


def gunicorn_options(settings: Settings, name: str) -> dict[str, Any]:
    host = settings.listen_address(name)
    port = settings.ports[name]
    common: dict[str, Any] = {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "proc_name": f"shmooze-{name}",
        "accesslog": None,
        "errorlog": "-",
        "loglevel": settings.log_level,
        "graceful_timeout": settings.stop_timeout,
        "on_starting": lambda server: procutil.become_subreaper(),
        "post_fork": _die_with_master,
        "control_socket_disable": True,  # one per user by default: several services would collide
        # A request's scheme is its connection's (plain HTTP), whatever X-Forwarded-Proto says: the Origin
        # check compares it exactly (a TLS proxy's https origin goes in allowed_origins).
        "secure_scheme_headers": {},
        # No client sets the WSGI environ: a SCRIPT_NAME or PATH_INFO header from a loopback peer (which
        # gunicorn trusts as a proxy by default) is dropped, not taken (a path outside it was a 500).
        "forwarder_headers": "",
    }
    if name == "wsgi":
        # The gateway holds no state: on stop it gives requests in flight a few seconds, and open
        # WebSockets (which would hold it for the whole graceful timeout) reconnect elsewhere.
        # gunicorn's gevent worker with the fast lane for plain command requests (shmooze.gateway.lane).
        return {**common, "workers": settings.gateway_workers, "worker_class": "shmooze.gateway.lane.GatewayWorker",
                "worker_connections": settings.gateway_connections, "keepalive": 30,
                "graceful_timeout": settings.gateway_stop_timeout}
    # A service holds state: exactly one worker process, with a pool of threads.
    # service_threads for commands that change state, read_threads more that only reads use;
    # with service_worker "loop", quick commands are answered on the connection loop (shmooze.http.loopworker).
    return {**common, "workers": 1, "worker_class": SERVICE_WORKERS[settings.service_worker],
            "threads": settings.service_threads + settings.read_threads,
            "keepalive": settings.service_keepalive}


_running: list[Any] = []
#: What to do as soon as the worker is told to stop (before gunicorn's graceful wait).
_on_stop: list[Callable[[], None]] = []


def _post_worker_init(worker: Any) -> None:
    """Once the worker is told to stop, release long polls at once, so it need not wait them out."""
    import threading
    import time

    def watch() -> None:
        while worker.alive:
            time.sleep(0.25)
        for action in _on_stop:
            action()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()


def _worker_exit(server: Any, worker: Any) -> None:
    for service in _running:
        try:
            service.stop()
        except Exception:
            log.exception("error while stopping %s", getattr(service, "name", service))


def _die_with_master(server: Any, worker: Any) -> None:
    """In each worker: if the gunicorn master dies (only a SIGKILL ends it before its workers), the
    worker dies too; a service worker's orphan guard then ends its modules."""
    if not procutil.die_with_parent(signal.SIGKILL, parent=server.pid):
        os._exit(1)


def one_malloc_arena() -> None:
    """Let a service's threads share one malloc arena (glibc gives each thread its own, up to 8 per
    core): under the GIL they rarely allocate at once, and the arenas' scattered free space cost
    about 5 KiB of RSS per module. Set with ``mallopt``, not ``MALLOC_ARENA_MAX``, so that the
    modules the service starts keep the default."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-8, 1)  # M_ARENA_MAX
    except OSError:
        pass  # not glibc: nothing to tune


def die_with_supervisord() -> None:
    """Under supervisord: if supervisord dies, even by SIGKILL, this service dies at once (and its
    workers and modules after it), so nothing keeps the ports and the next run starts clean."""
    if not os.environ.get("SUPERVISOR_ENABLED"):
        return
    if not procutil.die_with_parent(signal.SIGKILL):
        log.error("supervisord is gone already; not starting")
        sys.exit(1)


def check_placement(settings: Settings, name: str) -> None:
    """Raise :class:`SettingsError` when service ``name`` has several candidates in ``hosts`` and this host
    is none of them (without etcd, others reach the first; with etcd, the elected one)."""
    candidates = settings.candidates(name)
    if len(candidates) > 1 and settings.own_address(name) is None:
        from shmooze.settings import own_addresses

        said = own_addresses()
        this = f"--address {','.join(said)}" if said else "none of this host's interface addresses"
        raise SettingsError(f"{settings.path}: this host is none of the candidates of {name!r} "
                            f"({', '.join(candidates)}): {this}; run it on one of them, or name its address "
                            "with --address")


def serve(settings: Settings, name: str) -> None:
    """Serve the gateway (``name == "wsgi"``) or one service, in the foreground, until signalled."""
    if name not in settings.ports:
        raise SettingsError(f"{settings.path}: no port for {name!r} in 'ports' "
                            f"(ports: {', '.join(sorted(settings.ports))})")
    from shmooze import settings as current

    current.use(settings)
    configure_logging(name, settings.log_level.upper())
    exposed = exposure_warning(settings)
    if exposed:
        log.warning("%s", exposed)
    die_with_supervisord()
    if name == "wsgi":
        def load_gateway() -> Any:
            from shmooze.gateway.app import make_gateway

            gateway = make_gateway(settings)
            _on_stop.append(gateway.close_websockets)
            return gateway

        options = gunicorn_options(settings, name)
        options["post_worker_init"] = _post_worker_init
        hooks, made = _gather_gateway_metrics(settings)
        options.update(hooks)
        master = os.getpid()
        try:
            _GunicornApp(load_gateway, options).run()
        finally:
            if made is not None and os.getpid() == master:  # (a worker leaving unwinds through here too)
                import shutil

                shutil.rmtree(made, ignore_errors=True)
        return

    service_spec(settings, name)
    one_malloc_arena()
    from shmooze import servicekey
    from shmooze.access import check_listen_address

    check_listen_address(settings, name)  # beyond loopback: a key shared by every host
    check_placement(settings, name)
    key = servicekey.load(settings)  # read (or made) before gunicorn starts: a bad key file stops it here

    def load_service() -> Any:
        from shmooze.access import ServiceGuard
        from shmooze.hosting.host import ModuleHost
        from shmooze.http.jsonapp import service_app

        service = build_service(settings, name)
        if settings.etcd:  # one of the service's candidates: it starts once elected (shmooze.hosting.candidacy)
            from shmooze.hosting.candidacy import Candidacy

            candidacy = Candidacy(service, settings, name)
            candidacy.start()
            _running.append(candidacy)  # (its stop: the service's, then the lease ended)
        else:
            service.start()
            _running.append(service)
        _on_stop.append(service.events.close)
        if isinstance(service, ModuleHost):
            _on_stop.append(service.stop)  # a module host starts its ladders at once, not after gunicorn's wait
        guard = ServiceGuard.for_settings(service, settings, name, key)
        return service_app(service, settings.max_body_bytes, settings.max_answer_bytes, guard)

    options = gunicorn_options(settings, name)
    options["worker_exit"] = _worker_exit
    options["post_worker_init"] = _post_worker_init
    _GunicornApp(load_service, options).run()


def serve_factory(factory: Callable[[], Any], port: int, name: str = "service", **settings: Any) -> None:
    """Serve ``factory()`` on ``port`` in the foreground, with no settings file::

        serve_factory(lambda: Queue(TYPES), port=8081, name="queue")

    ``factory`` runs in the serving process (after gunicorn forks), so threads and
    module processes belong to it.
    """
    from shmooze.settings import Settings as Loaded

    serve(Loaded({"ports": {name: port}, "services": {name: factory}, **settings}), name)
