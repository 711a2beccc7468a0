"""The processes under test: the gateway, three services and the bare-WSGI floor, each on its own port."""

from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import PYTHON, Client, Managed, Proc, child_env, family, free_port

log = logging.getLogger("bench.stack")

SERVICES = {"volume": "jukebox.volume:Volume", "queue": "bench.benchapps:make_queue", "pool": "bench.benchapps:make_pool"}


class Stack(Managed):
    """Starts everything on enter and stops everything (by pid) on exit; a context manager."""

    def __init__(self, gateway_workers: int = 2):
        self.gateway_workers = gateway_workers
        self.dir = Path(tempfile.mkdtemp(prefix="shmooze-bench-"))
        self.ports = {name: free_port() for name in ("wsgi", "volume", "floor", "queue", "pool")}
        #: A second floor, not in the settings: the bare app under the gateway's gunicorn settings.
        self.gevent_floor_port = free_port()
        #: The gateway hop's floor: a minimal gevent TCP relay in front of the floor, as many processes
        #: as the gateway has workers (relay_floor.py).
        self.relay_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.failed = False
        self.settings_path = self.dir / "settings.json"
        self.settings_path.write_text(json.dumps({
            "ports": self.ports, "services": SERVICES, "gateway_workers": gateway_workers}, indent=2))

    # -- life ----------------------------------------------------------------------------


    def start(self) -> None:
        """Start the floor, the services and the gateway together; wait for every port."""
        env = child_env()
        floor_argv = [PYTHON, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "32", "--keep-alive", "120",
                      "--graceful-timeout", "15", "--no-control-socket", "--log-level", "warning",
                      "-b", f"127.0.0.1:{self.ports['floor']}", "bench.floorapp:app"]
        # (the floor proves its answers with the app's key, as the gateway asks of every service)
        floor_env = child_env({"SHMOOZE_SETTINGS": str(self.settings_path)})
        self.procs["floor"] = Proc("floor", floor_argv, floor_env, self.dir / "floor.log")
        gevent_argv = [PYTHON, "-m", "gunicorn", "-k", "gevent", "-w", str(self.gateway_workers),
                       "--worker-connections", "4000", "--keep-alive", "30", "--graceful-timeout", "15",
                       "--no-control-socket", "--log-level", "warning",
                       "-b", f"127.0.0.1:{self.gevent_floor_port}", "bench.floorapp:app"]
        self.procs["floor_gevent"] = Proc("floor_gevent", gevent_argv, env, self.dir / "floor_gevent.log")
        relay_argv = [PYTHON, str(Path(__file__).with_name("relay_floor.py")), str(self.relay_port),
                      str(self.ports["floor"]), str(self.gateway_workers)]
        self.procs["relay"] = Proc("relay", relay_argv, env, self.dir / "relay.log")
        for name in ("volume", "queue", "pool", "wsgi"):
            argv = [PYTHON, "-m", "shmooze", "serve", name, "--settings", str(self.settings_path)]
            self.procs[name] = Proc(name, argv, env, self.dir / f"{name}.log")
        ports = dict(self.ports, floor_gevent=self.gevent_floor_port, relay=self.relay_port)
        with ThreadPoolExecutor(len(self.procs)) as pool:
            for fut in [pool.submit(p.wait_port, ports[n], 60) for n, p in self.procs.items()]:
                fut.result()
        # The services start their I/O thread and orphan guard on first use: do it now.
        for name in ("queue", "pool"):
            client = Client(self.ports[name])
            try:
                client.call("status")
            finally:
                client.close()
        log.info("stack up in %s: ports %s", self.dir, self.ports)

    def stop_order(self) -> list[str]:
        """The gateway first, then the services (and floors)."""
        return ["wsgi", "relay", "queue", "pool", "volume", "floor", "floor_gevent"]

    # -- views ---------------------------------------------------------------------------

    def server_pids(self, *names: str) -> list[int]:
        """The pids (masters and workers) of the named processes."""
        pids: list[int] = []
        for name in names:
            pids.extend(family(self.procs[name].pid))
        return pids

    def worker_pid(self, name: str) -> int:
        """The worker process that holds the state of a one-worker service (from ``status``)."""
        client = Client(self.ports[name])
        try:
            return int(client.call("status")["pid"])
        finally:
            client.close()
