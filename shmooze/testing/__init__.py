"""A test kit for shmooze applications: start an application's services and gateway on free ports as
real processes, wait with deadlines, talk to it (HTTP, WebSocket), and stop everything by pid with
proof that no process is left behind.

    from shmooze.testing import Stack, WebSocketClient

    def test_the_queue_says_what_plays(tmp_path):
        with Stack(tmp_path, {"queue": "myapp:make_queue"}) as stack:
            with WebSocketClient.connect(stack.ws) as ws:
                ...

Failures raise ``AssertionError`` (pytest shows them as failed tests). Simulated hosts (network
namespaces, root only) are in :mod:`shmooze.testing.netns`.
"""

from shmooze.testing.processes import (
    HOST,
    PYTHON,
    Process,
    descendants,
    free_port,
    gone,
    port_open,
    shmooze_argv,
    started_at,
    stop_all,
)
from shmooze.testing.stack import Stack, on_every_worker, server_workers, start_service, worker_of, write_settings
from shmooze.testing.wsclient import WebSocketClient

__all__ = ["HOST", "PYTHON", "Process", "Stack", "WebSocketClient", "descendants", "free_port", "gone", "on_every_worker",
           "port_open", "server_workers", "shmooze_argv", "start_service", "started_at", "stop_all", "worker_of",
           "write_settings"]
