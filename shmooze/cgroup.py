"""cgroup v2, the little of it shmooze uses: make a folder, put a process in it, kill it all, remove it.

A cgroup holds every process started inside it, whatever they do afterwards
(``setsid``, double forks, a cleared environment), and ``cgroup.kill`` SIGKILLs
all of them at once, atomically with respect to forks. The kernel needs cgroup v2
(the unified hierarchy, alone or beside v1) and ``cgroup.kill`` (Linux 5.14), and
the service must be allowed to write its own cgroup (root, or delegated by systemd).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Runs the rest of its arguments inside the cgroup folder given first: the shell moves
#: itself (``0`` is the writer) and then becomes the module with ``exec``, so the module
#: is inside from its first instruction and nothing it starts can be born outside.
LAUNCHER = ("/bin/sh", "-c", 'echo 0 > "$0/cgroup.procs" || exit 125; exec "$@"')


def mount_point() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, or None."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return Path(fields[1].replace("\\040", " "))
    except OSError:
        pass
    return None


def own_cgroup(pid: int | str = "self") -> Path | None:
    """The folder of a process's own cgroup v2, or None."""
    root = mount_point()
    if root is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return root / line[3:].strip().lstrip("/")
    except OSError:
        pass
    return None


def procs(path: Path) -> list[int]:
    """Pids in one cgroup (not its children)."""
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def members(path: Path) -> list[int]:
    """Pids in a cgroup and every cgroup below it."""
    out: list[int] = []
    for folder, _dirs, _files in os.walk(path):
        out.extend(procs(Path(folder)))
    return out


def populated(path: Path) -> bool:
    """Whether a live process is in the cgroup or below (zombies do not count)."""
    try:
        for line in (path / "cgroup.events").read_text().splitlines():
            if line.startswith("populated "):
                return line.split()[1] != "0"
    except OSError:
        return False
    return False


def kill(path: Path) -> bool:
    """SIGKILL everything in the cgroup and below; False when there is no such cgroup."""
    try:
        (path / "cgroup.kill").write_text("1")
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # being removed
            return False
        raise


def wait_empty(path: Path, timeout: float) -> bool:
    """Wait until no live process is left in the cgroup; True if none is."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while populated(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def remove(path: Path, timeout: float = 2.0) -> bool:
    """Kill what is left, wait for it, and remove the folder and every folder below it."""
    if not path.exists():
        return True
    if populated(path):
        kill(path)
        if not wait_empty(path, timeout):
            log.error("cgroup %s still has processes %s after cgroup.kill", path, members(path))
            return False
    done = True
    for folder, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", folder, exc.strerror)
            done = False
    return done


def launch_argv(path: Path, argv: list[str]) -> list[str]:
    """``argv`` run inside the cgroup at ``path`` (same pid: the launcher execs it)."""
    return [*LAUNCHER, str(path), *argv]


def usable_parent() -> tuple[Path | None, str]:
    """The folder under which this process may make cgroups and move processes into them.

    Returns ``(folder, "")``, or ``(None, why not)``. The test is real: a child
    cgroup is made, a shell moves itself into it, and it is removed again.
    """
    import subprocess

    parent = own_cgroup()
    if parent is None:
        return None, "no cgroup v2 hierarchy is mounted"
    probe = parent / f"shmooze-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except FileExistsError:
        pass
    except OSError as exc:
        return None, f"cannot make a cgroup in {parent}: {exc.strerror}"
    try:
        if not (probe / "cgroup.kill").exists():
            return None, f"the kernel has no cgroup.kill (Linux 5.14 or later needed) in {parent}"
        try:
            moved = subprocess.run(launch_argv(probe, ["true"]), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"cannot run the cgroup launcher: {exc}"
        if moved != 0:
            return None, f"cannot move a process into a cgroup under {parent} (not delegated to this user?)"
    finally:
        remove(probe)
    return parent, ""


def owner_pid(name: str) -> int | None:
    """The service pid in a folder name ``shmooze-PID-HEX``, or None."""
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "shmooze" and parts[1].isdigit():
        return int(parts[1])
    return None


def sweep_stale(parent: Path) -> list[Path]:
    """Remove service folders left by services that died with their guard: their pid is gone.

    A folder whose pid is alive is left alone (its service may be running).
    """
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = owner_pid(entry.name)
        if pid is None or not entry.is_dir():
            continue
        try:
            os.kill(pid, 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if populated(entry):
            log.warning("cgroup %s outlived its service (pid %d): its processes %s are killed",
                        entry, pid, members(entry))
        if remove(entry):
            removed.append(entry)
    return removed
