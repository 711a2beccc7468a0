"""Metrics in the Prometheus text format, gathered at scrape time.

Each service counts its own figures (commands and their latency, module starts and ends by rung)
in its own ``prometheus_client`` registry and hands them out with its read-only ``metrics``
command as plain JSON. A service is one process, so its counts are whole.

The gateway runs several worker processes: on ``GET {wsgi_prefix}metrics`` the worker that got the
scrape asks every service for its ``metrics`` at that moment (so no gateway worker holds a partial
copy of a service's counts) and adds ``shmooze_service_up``. The gateway's own figures (push
watchers, events sent) live in each worker; they are summed across workers by prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by ``shmooze serve wsgi``), or counted in the
one process when there is no such folder. Those files are mmapped: a page written where the disk has
none left kills the process (SIGBUS), so each worker reserves its files' space first
(:func:`reserve_files`) and, when it cannot (a full disk), keeps its figures in memory, out of the
scrapes, rather than die.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any, Iterable

log = logging.getLogger(__name__)

#: Latency buckets of commands, in seconds (module commands wait on processes: up to tens of seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceStats:
    """The counts one service keeps of itself."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.commands = Counter("shmooze_commands", "Commands answered, by command and outcome",
                                ["command", "outcome"], registry=self.registry)
        self.latency = Histogram("shmooze_command_seconds", "Time to answer a command, by command",
                                 ["command"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.starts = Counter("shmooze_module_starts", "Module starts, by type and result",
                              ["type", "result"], registry=self.registry)
        self.ends = Counter("shmooze_module_ends", "Modules ended, by type and the rung that ended them",
                            ["type", "rung"], registry=self.registry)
        self.restarts = Counter("shmooze_module_restarts", "Restarts made by restart policies, by type",
                                ["type"], registry=self.registry)
        self._children: dict[tuple[str, bool], tuple[Any, Any]] = {}

    def command(self, name: str, known: bool, ok: bool, seconds: float) -> None:
        """Count one answered command (unknown names are counted under one label)."""
        key = (name if known else "(unknown)", ok)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and a lookup: keep each pair of children
            children = self._children[key] = (self.commands.labels(key[0], "ok" if ok else "error"),
                                               self.latency.labels(key[0]))
        children[0].inc()
        children[1].observe(seconds)

    def export(self, service: str, gauges: Iterable[tuple[str, str, str, dict[str, str], float]] = ()) -> list:
        """Every family as JSON: ``[{"name", "help", "type", "samples": [[name, labels, value]]}]``, each
        sample labelled with the service; ``gauges`` adds ``(name, help, type, labels, value)`` figures
        read now (modules running, events published)."""
        families = []
        for metric in self.registry.collect():
            families.append({"name": metric.name, "help": metric.documentation, "type": metric.type,
                             "samples": [[s.name, {"service": service, **s.labels}, s.value]
                                         for s in metric.samples]})
        extra: dict[str, dict[str, Any]] = {}
        for name, help_text, kind, labels, value in gauges:
            family = extra.setdefault(name, {"name": name, "help": help_text, "type": kind, "samples": []})
            sample_name = name + "_total" if kind == "counter" else name
            family["samples"].append([sample_name, {"service": service, **labels}, value])
        return families + list(extra.values())


# -- the gateway side -----------------------------------------------------------------------

def _families_from_json(data: list) -> dict[str, Any]:
    from prometheus_client.core import Metric

    out: dict[str, Any] = {}
    for fam in data if isinstance(data, list) else []:
        try:
            metric = out.get(fam["name"])
            if metric is None:
                metric = out[fam["name"]] = Metric(fam["name"], fam["help"], fam["type"])
            for name, labels, value in fam["samples"]:
                metric.add_sample(name, {str(k): str(v) for k, v in labels.items()}, float(value))
        except (KeyError, TypeError, ValueError):
            log.warning("a service sent a metric family the gateway cannot read: %.200s", json.dumps(fam))
    return out


class ServicesCollector:
    """A prometheus_client collector that asks every service for its ``metrics`` at scrape time."""

    def __init__(self, proxies: dict[str, Any], timeout: float = 3.0):
        self.proxies = proxies
        self.timeout = timeout

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily, Metric

        from shmooze import protocol
        from shmooze.http.forward import ForwardError

        up = GaugeMetricFamily("shmooze_service_up", "Whether the service answered the scrape (1) or not (0)",
                               labels=["service"])
        scrape = GaugeMetricFamily("shmooze_scrape_seconds", "Time to ask the service for its metrics",
                                   labels=["service"])
        merged: dict[str, Metric] = {}
        body = protocol.dumps({"cmd": "metrics"})
        for name, proxy in sorted(self.proxies.items()):
            started = time.monotonic()
            try:
                ok, value = protocol.parse_answer(json.loads(proxy.post(body).body))
            except (ForwardError, ValueError) as exc:
                ok, value = False, str(exc)
            scrape.add_metric([name], time.monotonic() - started)
            # A service without the metrics command (an older or foreign one) is up but has no figures.
            answered = ok or (isinstance(value, str) and "unknown command" in value)
            up.add_metric([name], 1.0 if answered else 0.0)
            if not ok:
                continue
            for fam_name, fam in _families_from_json(value).items():
                if fam_name in merged:
                    merged[fam_name].samples.extend(fam.samples)
                else:
                    merged[fam_name] = fam
        yield up
        yield scrape
        yield from merged.values()


#: The files of a gateway worker's figures in multiprocess mode (prometheus_client's names), and the
#: space reserved for each (prometheus_client's first size: it grows them only past that).
GATEWAY_FILES, GATEWAY_FILE_BYTES = ("counter", "gauge_livesum"), 1 << 16


def reserve_files(folder: str, pid: int) -> OSError | None:
    """Give this process's multiprocess files their disk space now (None), or say why it cannot be had
    (the files are then removed). prometheus_client makes them sparse: a full disk would show as SIGBUS
    at the first figure written, not as an error."""
    made = []
    try:
        for prefix in GATEWAY_FILES:
            path = os.path.join(folder, f"{prefix}_{pid}.db")
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            made.append(path)
            try:
                if os.fstat(fd).st_size == 0:
                    os.posix_fallocate(fd, 0, GATEWAY_FILE_BYTES)
            finally:
                os.close(fd)
    except OSError as exc:
        for path in made:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return exc
    return None


class GatewayStats:
    """The figures of one gateway worker: WebSocket sessions and push events sent.

    ``shared``: counted in the multiprocess folder (its files' space reserved), else in memory only."""

    def __init__(self, shared: bool = True) -> None:
        from prometheus_client import Counter, Gauge

        multiprocess = self.shared = shared and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        gauge_options: dict[str, Any] = {"multiprocess_mode": "livesum"} if multiprocess else {}
        self.sessions = Gauge("shmooze_push_sessions", "Open WebSocket sessions at the gateway",
                              registry=None, **gauge_options)
        self.watchers = Gauge("shmooze_push_watchers", "Services each gateway worker is watching for changes",
                              registry=None, **gauge_options)
        self.events = Counter("shmooze_push_events_sent", "Change messages sent to browsers over WebSockets",
                              registry=None)
        self.watch_retries = Counter("shmooze_push_watch_retries",
                                     "Times a watcher could not reach its service and waited before trying again",
                                     registry=None)

    def registry(self, proxies: dict[str, Any]) -> Any:
        """A registry for one scrape: this process's (or every worker's) figures and every service's."""
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            for metric in (self.sessions, self.watchers, self.events, self.watch_retries):
                registry.register(metric)
        registry.register(ServicesCollector(proxies))
        return registry


_gateway_stats: GatewayStats | None = None
_stats_lock = threading.Lock()


def gateway_stats() -> GatewayStats:
    """This process's gateway figures (one set per process: prometheus_client's values are per process)."""
    global _gateway_stats
    with _stats_lock:
        if _gateway_stats is None:
            folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            failed = reserve_files(folder, os.getpid()) if folder else None
            if failed is not None:
                from prometheus_client import values

                log.warning("this gateway worker's push figures are left out of the metrics: no space for its "
                            "files in %s (%s)", folder, failed.strerror or failed)
                values.ValueClass = values.MutexValue  # (this process only: its figures stay in memory)
            _gateway_stats = GatewayStats(shared=failed is None)
        return _gateway_stats


def render(registry: Any) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry), CONTENT_TYPE_LATEST
