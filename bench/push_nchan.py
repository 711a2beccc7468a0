"""The push benchmark's nchan anchor: nginx with nchan (Debian's ``libnginx-mod-nchan``), and its publisher.

:class:`Nginx` writes a config into a temp dir and runs ``nginx -g "daemon off;"`` with it on a
loopback port: one channel, ``stamp``; ``/sub`` takes WebSocket subscribers, ``/pub`` takes
messages posted over HTTP (nchan's HTTP publisher). It is stopped by its pid (SIGTERM: nginx's fast
shutdown, every connection closed).

As a child, ``python -m bench.push_nchan PORT SAMPLE_FILE`` is the publisher: it takes the floors'
standard-input commands (``stamp INTERVAL SECONDS`` -> ``done N``; see bench/push_fanout_floor.py)
and posts each stamp (the sample change message with ``time``, ``seq`` and ``sent`` filled in anew)
to ``/pub`` over one kept-alive HTTP connection: one hop, as a module's update is to the gateway.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.push_wire import stamp_template, stamp_time

NGINX = "/usr/sbin/nginx"
MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
SUB_PATH = "/sub"
PUB_PATH = "/pub"


def available() -> str | None:
    """None when nginx and nchan are installed here, else why not."""
    if not os.path.exists(NGINX):
        return f"{NGINX} not found (Debian's nginx)"
    if not os.path.exists(MODULE):
        return f"{MODULE} not found (Debian's libnginx-mod-nchan)"
    return None


def nginx_config(port: int, workers: int, folder: Path, connections: int) -> str:
    """nginx.conf for one nchan channel on 127.0.0.1:port; everything nginx writes goes to ``folder``."""
    temp = "\n".join(f"    {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi"))
    return f"""load_module {MODULE};
worker_processes {workers};
worker_rlimit_nofile {connections + 1000};
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
{temp}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {PUB_PATH} {{
            nchan_publisher http;
            nchan_channel_id stamp;
            nchan_message_buffer_length 4;
            nchan_message_timeout 10s;
        }}
        location = {SUB_PATH} {{
            nchan_subscriber websocket;
            nchan_channel_id stamp;
            nchan_subscriber_first_message newest;
        }}
    }}
}}
"""


class Nginx:
    """nginx with nchan on ``port``, in the foreground, in its own session; stopped by its pid."""

    def __init__(self, port: int, workers: int, folder: Path, connections: int):
        self.port = port
        self.folder = folder
        self.conf = folder / "nginx.conf"
        self.conf.write_text(nginx_config(port, workers, folder, connections))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([NGINX, "-p", str(self.folder), "-c", str(self.conf), "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "stderr.log", "ab"), start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        """The master and its workers."""
        try:
            master = psutil.Process(self.pid)
            return [master, *master.children()]
        except psutil.Error:
            return []

    def stop(self) -> None:
        """SIGTERM (fast shutdown) to the master by its pid; SIGKILL to what is left after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = self.processes()[1:]
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        _, left = psutil.wait_procs(workers, timeout=5)
        for p in left:
            p.kill()

    def log_tail(self) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def main(port: int, sample: bytes) -> None:
    """The publisher: a stamp posted to nchan every INTERVAL s, on the floors' commands."""
    a, b, c, d = stamp_template(sample)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    seq = 0
    busy_until = 0.0  # when the last post was answered (time.time())
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "stamp":
            continue
        interval, seconds = float(words[1]), float(words[2])
        due = time.monotonic()
        end = due + seconds
        wall = time.time() - due  # monotonic -> time.time()
        while due < end:
            seq += 1
            now = repr(stamp_time(due + wall, busy_until))
            body = f"{a}{now}{b}{seq}{c}{now}{d}".encode()
            try:
                conn.request("POST", PUB_PATH, body, headers)
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()  # nginx restarted: the next stamp opens a new connection
            busy_until = time.time()
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))
        sys.stdout.write(f"done {seq}\n")
        sys.stdout.flush()
    conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]).read_bytes())
