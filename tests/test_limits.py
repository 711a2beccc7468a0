"""Resource limits in cgroups, with real module processes: memory, processes (a fork bomb), CPU rate.

Where the memory, pids and cpu controllers are enabled for cgroup v2 they are used; else the cgroup
v1 hierarchies of a hybrid system (one folder per module in each); the rlimit fallback is tested in
test_ops.py with ``limits_mode = "rlimit"``. Each test checks that the module's folders are gone
after it ends, and the service's folders after the service stops.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from shmooze import serve
from shmooze.pool import Pool
from shmooze.settings import Settings
from shmooze.system import cgroup, ladder, usage
from shmooze.system.containment import Containment
from tests.helpers import Driver, gone, wait_for
from tests.test_ops import module_status, otype


def _where_limits_go() -> dict[str, str]:
    if os.geteuid() != 0:
        return {}
    probe = Containment(f"{os.getpid()}-probe", sweep_tokens=False)
    try:
        return probe.places.kinds()
    finally:
        probe.close()


KINDS = _where_limits_go()
needs = pytest.mark.skipif(
    not {"memory", "pids", "cpu"} <= set(KINDS),
    reason="needs the memory, pids and cpu cgroup controllers writable (cgroup v2 delegated, or v1 as root); "
           f"here: {KINDS or 'none'}")


def box_of(d, uid: str):
    return next(m.box for m in d.svc.table.live() if m.uid == uid)


def ended(d, uid: str) -> dict | None:
    return next((m for m in d.ok("status")["ended"] if m["uid"] == uid), None)


def folder(box, controller: str) -> Path:
    return box.controllers[controller][1]


def read(path: Path) -> str:
    return path.read_text().strip()


def assert_folders_gone(paths) -> None:
    left = [p for p in paths if p.exists()]
    assert not left, f"cgroup folders left behind: {left}"


def service_folders(d) -> list[Path]:
    return service_folders_of(d.svc.containment)


@needs
def test_memory_limit_ends_a_module_with_its_rung(make_host):
    d = make_host(Pool, [otype("mem", limit_memory=120 << 20)])
    calm = d.add("mem", alloc_mb=30)
    box = box_of(d, calm)
    mem = folder(box, "memory")
    version = box.controllers["memory"][0]
    assert read(mem / ("memory.max" if version == 2 else "memory.limit_in_bytes")) == str(120 << 20)
    status = wait_for(lambda: (lambda m: m if m["rss_bytes"] >= 30 << 20 else None)(module_status(d, calm)), 10,
                      what="30 MiB counted by the cgroup")
    assert status["limits_held"] == {"memory": f"cgroup v{version}"}
    assert status["rss_bytes"] < 120 << 20
    # A module that allocates past the limit is killed by the kernel (SIGKILL: it prints nothing);
    # the cgroup's OOM count names the rung.
    greedy = d.add("mem", alloc_mb=300)
    paths = box_of(d, greedy).v1_folders
    end = wait_for(lambda: ended(d, greedy), 20, what="the OOM kill")
    assert end["ended_by"] == "limit:memory", end
    assert end["returncode"] == -9 and f"cgroup v{version}" in end["reason"] and "limit_memory" in end["reason"]
    assert module_status(d, calm)["state"] == "running"  # the other module is untouched
    assert_folders_gone(paths)
    whole = service_folders(d)
    d.ok("rm", uids=[calm])
    assert_folders_gone(box.v1_folders)
    d.svc.stop()
    assert_folders_gone(whole)


@needs
def test_fork_bomb_is_capped_by_pids_and_ended_whole(make_host):
    d = make_host(Pool, [otype("bomb", limit_processes=24, limit_cpu_rate=0.25),
                         otype("forks", limit_processes=8)])
    uid = d.add("bomb", bomb=True)
    box = box_of(d, uid)
    pids = folder(box, "pids")
    assert read(pids / "pids.max") == "24"
    # The bomb reaches the cap and is refused there, again and again; it never exceeds it.
    wait_for(lambda: cgroup.read_keyed(pids / "pids.events").get("max", 0) > 5, 30, what="forks refused")
    for _ in range(5):
        assert cgroup.read_int(pids / "pids.current") <= 24
        assert module_status(d, uid)["processes"] <= 24
    members = box.members()
    assert len(members) > 3
    d.ok("rm", uids=[uid])
    end = ended(d, uid)
    assert end["ended_by"] in (ladder.RM, ladder.SIGTERM, ladder.SIGKILL), end  # removed: not a limit's doing
    assert all(gone(p) for p in members)
    assert_folders_gone([*box.v1_folders, *([box.path] if hasattr(box, "path") else [])])
    # A module that dies because it cannot start a process gets the rung of its limit.
    crashy = d.add("forks", forks=30)
    end = wait_for(lambda: ended(d, crashy), 20, what="the refused fork")
    assert end["ended_by"] == "limit:processes" and "limit_processes" in end["reason"], end


@needs
def test_cpu_rate_is_a_quota_and_cpu_time_ends_the_module(make_host):
    d = make_host(Pool, [otype("spin", limit_cpu_rate=0.3, limit_cpu=1)])
    uid = d.add("spin", spin=30)
    box = box_of(d, uid)
    version, cpu = box.controllers["cpu"]
    if version == 2:
        assert read(cpu / "cpu.max") == "30000 100000"
    else:
        assert read(cpu / "cpu.cfs_quota_us") == "30000" and read(cpu / "cpu.cfs_period_us") == "100000"
    assert module_status(d, uid)["limits_held"] == {"cpu": "rlimit", "cpu_rate": f"cgroup v{version}"}
    # The kernel throttles it (observable in cpu.stat), and its CPU % stays far below one core.
    wait_for(lambda: cgroup.read_keyed(cpu / "cpu.stat").get("nr_throttled", 0) > 0, 20, what="throttling")
    def cpu_percent() -> dict | None:
        m = module_status(d, uid)
        return m if m and m.get("cpu_percent") else None

    # The first figure's interval starts when the module was placed, but its CPU time counts from its
    # exec (the interpreter's start, throttled too, comes before it): the figure to judge is one measured
    # against a sample taken while it ran, that is, asked at least MIN_INTERVAL after a first one.
    wait_for(cpu_percent, 10, interval=0.6, what="a first CPU % (the next one's base)")
    based = time.monotonic() + usage.MIN_INTERVAL + 0.05
    status = wait_for(lambda: time.monotonic() >= based and cpu_percent(), 10, interval=0.2,
                      what="a CPU % between two samples")
    assert status["cpu_percent"] < 75, status
    # CPU *time* stays an rlimit: after one second of CPU it is ended, with its rung.
    end = wait_for(lambda: ended(d, uid), 30, what="the CPU time limit")
    assert end["ended_by"] == "limit:cpu", end
    assert_folders_gone(box.v1_folders)


@needs
def test_modules_without_limits_get_no_extra_folders(make_host):
    d = make_host(Pool, [otype("free")])
    uid = d.add("free")
    box = box_of(d, uid)
    assert box.v1_folders == [] and box.held == {}
    status = d.ok("status")
    assert set(status["containment"]["limits"]) >= {"memory", "pids", "cpu"}
    assert "limits" not in module_status(d, uid)


@needs
def test_limits_and_policies_from_the_settings_file(tmp_path):
    """``module_types`` in the settings reaches a served pool: the limit is in the cgroup, and a
    module that passes it ends with its rung and is restarted as the settings say."""
    settings = Settings({"ports": {"wsgi": 1, "pool": 2}, "services": {"pool": "tests.apps:make_ops_pool"},
                         "journal": False, "module_limits": "cgroup",
                         "module_types": {"ops": {"limit_memory": "100M", "restart": "on-failure",
                                                  "restart_delay": 0.1, "restart_max_starts": 2}}},
                        str(tmp_path / "settings.json"))
    service = serve.build_service(settings, "pool")
    assert service.limits_mode == "cgroup" and service.types["ops"].limit_memory == 100 << 20
    service.start()
    try:
        d = Driver(service)
        uid = d.add("ops", alloc_mb=300)
        status = wait_for(lambda: (lambda s: s if s["given_up"] else None)(d.ok("status")), 30, what="given up")
        ends = [m for m in status["ended"] if m["uid"] == uid]
        assert [m["ended_by"] for m in ends] == ["limit:memory", "limit:memory"], ends
        assert status["given_up"][0]["restarts"] == 1
    finally:
        service.stop()
    assert_folders_gone(service_folders(d))


@needs
def test_folders_of_a_service_that_died_are_swept_at_the_next_start():
    """A service killed with SIGKILL leaves its (emptied) v1 folders; the next service removes them."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    places = Containment(f"{dead.pid}-0000", sweep_tokens=False).places  # made as that service would
    stale = [*set(places.v1.values())]
    for folder in stale:
        (folder / "m1").mkdir()
    assert stale and all(f.exists() for f in stale)
    fresh = Containment(f"{os.getpid()}-sweeper", sweep_tokens=False)
    try:
        assert_folders_gone(stale)
    finally:
        fresh.close()
    assert_folders_gone(service_folders_of(fresh))


def service_folders_of(containment: Containment) -> list[Path]:
    return [*set(containment.places.v1.values()), *([containment.folder] if containment.folder else [])]
