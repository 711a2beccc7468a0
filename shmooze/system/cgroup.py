"""cgroups, the little of them shmooze uses: make a folder, put a process in it, kill it all, remove it.

A cgroup holds every process started inside it, whatever they do afterwards
(``setsid``, double forks, a cleared environment), and ``cgroup.kill`` SIGKILLs
all of them at once, atomically with respect to forks. The kernel needs cgroup v2
(the unified hierarchy, alone or beside v1) and ``cgroup.kill`` (Linux 5.14), and
the service must be allowed to write its own cgroup (root, or delegated by systemd).

Resource limits (:mod:`shmooze.system.limits`) need the memory, pids and cpu controllers. Where they are
not enabled in the v2 hierarchy but mounted as cgroup v1 hierarchies (a "hybrid" system), a
module gets one more folder in each v1 hierarchy it needs (:func:`v1_mounts`, :func:`own_v1`);
the launcher puts the module in all its folders before it runs, and :func:`remove_v1` (v1 has
no ``cgroup.kill``) ends what is left in such a folder and removes it.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Runs the command after ``--`` inside the cgroup folders given before it (one per hierarchy):
#: the shell moves itself (``0`` is the writer) and then becomes the module with ``exec``, so
#: the module is inside from its first instruction and nothing it starts can be born outside.
LAUNCHER = ("/bin/sh", "-c",
            'for d; do shift; [ "$d" = -- ] && break; echo 0 > "$d/cgroup.procs" || exit 125; done; exec "$@"',
            "shmooze-launch")


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


def remove_empty(path: Path) -> bool:
    """Remove the folder if no live process is in it and none is below it (the kernel refuses
    otherwise); True when it is gone."""
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def remove(path: Path, timeout: float = 2.0) -> bool:
    """Kill what is left, wait for it, and remove the folder and every folder below it."""
    if remove_empty(path):  # the usual end
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


def enter(path: Path, pid: int) -> None:
    """Move a process into the cgroup folder at ``path`` (``ProcessLookupError`` when it has ended)."""
    with open(path / "cgroup.procs", "w") as f:
        f.write(str(pid))


def launch_argv(paths: Path | list[Path], argv: list[str]) -> list[str]:
    """``argv`` run inside the cgroup folder(s) at ``paths`` (same pid: the launcher execs it)."""
    folders = [paths] if isinstance(paths, Path) else list(paths)
    return [*LAUNCHER, *(str(p) for p in folders), "--", *argv]


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


def sweep_stale(parent: Path, version: int = 2) -> list[Path]:
    """Remove service folders left by services that died with their guard: their pid is gone.

    A folder whose pid is alive is left alone (its service may be running). ``version`` 1: a
    folder in a cgroup v1 hierarchy (see :func:`remove_v1`).
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
        if version == 2 and populated(entry):
            log.warning("cgroup %s outlived its service (pid %d): its processes %s are killed",
                        entry, pid, members(entry))
        if remove(entry) if version == 2 else remove_v1(entry):
            removed.append(entry)
    return removed


# -- cgroup v1 hierarchies (for limits on hybrid systems) ---------------------------------


def v1_mounts() -> dict[str, Path]:
    """Where each cgroup v1 controller's hierarchy is mounted (``memory``, ``pids``, ``cpu``, ...)."""
    found: dict[str, Path] = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[2] == "cgroup":
                    for option in fields[3].split(","):
                        found.setdefault(option, Path(fields[1].replace("\\040", " ")))
    except OSError:
        pass
    return found


def own_v1(controller: str, pid: int | str = "self") -> Path | None:
    """The folder of a process's cgroup in the v1 hierarchy of ``controller``, or None."""
    root = v1_mounts().get(controller)
    if root is None:
        return None
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _n, names, rel = line.rstrip("\n").split(":", 2)
                if controller in names.split(","):
                    return root / rel.lstrip("/")
    except (OSError, ValueError):
        pass
    return None


def remove_v1(path: Path, timeout: float = 2.0) -> bool:
    """Remove a v1 folder and those below it, SIGKILLing any process still inside; True when gone.

    (A v1 folder cannot be removed while a process is in it, and v1 has no ``cgroup.kill``.)
    """
    if not path.exists():
        return True
    deadline = time.monotonic() + timeout
    done = True
    for folder, _dirs, _files in os.walk(path, topdown=False):
        delay = 0.001
        while True:
            try:
                os.rmdir(folder)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    log.warning("cannot remove cgroup %s: %s (processes %s)", folder, exc.strerror,
                                procs(Path(folder)))
                    done = False
                    break
            for pid in procs(Path(folder)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    return done


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``memory.events``, ``pids.events``, ``memory.oom_control``) as a dict;
    empty when it cannot be read."""
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
    except OSError:
        pass
    return out


def read_int(path: Path) -> int | None:
    """A cgroup file holding one number (``memory.current``, ``pids.current``), or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
