"""Open files sized from the settings: ``LimitNOFILE`` in the systemd units, and ``shmooze run`` raising its
soft limit (which supervisord, the services and their workers inherit) or saying why it cannot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shmooze import settings as settings_mod
from shmooze.deploy.runner import open_files_needed, systemd_units
from tests.helpers import Process, descendants, free_port, shmooze_argv, stop_all, wait_for, wait_running, write_settings


def app_settings(tmp: Path, **extra: object) -> Path:
    return write_settings(tmp / "settings.json", ports={"wsgi": free_port(), "volume": free_port()},
                          services={"volume": "jukebox.volume:Volume"}, run_path=str(tmp / "run"), **extra)


def unit_limit(text: str) -> int:
    values = [int(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(values) == 1, text
    return values[0]


def test_units_carry_open_files_sized_from_the_settings(tmp_path):
    small = settings_mod.read(app_settings(tmp_path, gateway_connections=500, gateway_workers=2))
    large = settings_mod.read(app_settings(tmp_path, gateway_connections=20000, gateway_workers=4))
    for settings in (small, large):
        units = systemd_units(settings)
        gateway = next(text for name, text in units.items() if name.endswith("-wsgi.service"))
        volume = next(text for name, text in units.items() if name.endswith("-volume.service"))
        # a gateway worker: each client and its command's connection to a service
        assert unit_limit(gateway) == open_files_needed(settings, "wsgi") > 2 * settings.gateway_connections
        # a service: every client connection of every gateway worker may wait on it
        assert unit_limit(volume) == open_files_needed(settings, "volume") > \
            settings.gateway_connections * settings.gateway_workers
    assert unit_limit(next(iter(systemd_units(large).values()))) > unit_limit(next(iter(systemd_units(small).values())))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def run_under(path: Path, tmp: Path, soft: int, hard: int) -> Process:
    """``shmooze run`` started with the given open-files limits (util-linux prlimit), running."""
    return wait_running(Process(["prlimit", f"--nofile={soft}:{hard}", "--", *shmooze_argv("run", str(path))],
                                log_path=tmp / "run.log"))


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="no prlimit (util-linux)")
def test_run_raises_its_soft_limit_to_what_the_settings_need(tmp_path):
    path = app_settings(tmp_path, gateway_connections=1000, gateway_workers=2)
    settings = settings_mod.read(path)
    need = max(open_files_needed(settings, name) for name in settings.ports)
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this machine's hard limit ({hard}) is below what the test's settings need ({need})")
    run = run_under(path, tmp_path, 256, need + 100)
    try:
        assert soft_limit(run.pid) == need  # (prlimit execs shmooze run in its place)
        volume = wait_for(lambda: [pid for pid in descendants(run.pid) if "volume" in cmdline(pid)], 10)
        assert all(soft_limit(pid) == need for pid in volume)  # inherited by the service and its workers
        assert "open files" not in run.log()
    finally:
        stop_all([run])


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="no prlimit (util-linux)")
def test_run_says_so_when_the_hard_limit_is_too_low(tmp_path):
    path = app_settings(tmp_path, gateway_connections=1000, gateway_workers=2)
    run = run_under(path, tmp_path, 256, 1500)
    try:
        assert soft_limit(run.pid) == 1500  # as far as it may go
        line = next(line for line in run.log().splitlines() if "open files" in line)
        assert "warning" in line and "hard limit is 1500" in line and "gateway_connections 1000" in line, line
    finally:
        stop_all([run])
