"""The HTTP benchmark's processes answer what the benchmark asks of them.

A benchmark that no test runs breaks quietly: the bare floor behind the gateway once failed every
request (the gateway's caller header, covered by its signature, was left out of the floor's check).
This starts the benchmark's own stack (gateway, services, floors, relay) and sends one command to
each target the latency section measures, as it does.
"""

from __future__ import annotations

import json

from bench.common import Client
from bench.floorapp import ANSWER
from bench.http_bench import GET_VOLUME, targets
from bench.stack import Stack
from shmooze.polling import wait_until
from shmooze.testing.processes import gone


def test_every_target_of_the_http_benchmark_answers_and_the_stack_leaves_nothing() -> None:
    with Stack(gateway_workers=1) as stack:
        pids = stack.server_pids(*stack.procs)
        for name, target in targets(stack).items():
            client = Client(target.port, target.path, timeout=20)
            try:
                answer = client.raw(GET_VOLUME)
            finally:
                client.close()
            if name in ("floor", "floor_gevent", "gw_floor", "relay"):
                assert answer == ANSWER, name
            else:
                assert json.loads(answer)["success"] is True, (name, answer)
    wait_until(lambda: all(gone(pid) for pid in pids), 10, "every process of the benchmark's stack to end")
