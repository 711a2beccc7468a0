"""Folders and files that only this user may touch: the run folder, its lock and configuration, and
the application's state files (journal, command log, module output).

Why: a folder in a shared place can be created first by another local user, and a symbolic link
planted in it makes a process running as root write where the link points. So a private folder is
created with mode 0700 (its missing parents too), and an existing one is used only when ``lstat``
shows a real folder owned by this user with no group or other permission bits; the folders above
it must be ones no other user can rename it in. Files in it are opened without following a
symbolic link and written atomically (a new file renamed over the old one). Anything else is
refused with :class:`NotPrivate`, which names the path, its owner and mode, and what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable

from shmooze.errors import ShmoozeError

log = logging.getLogger(__name__)

#: Flags every private file is opened with: no symbolic link followed, not inherited by children,
#: and no wait on a FIFO planted in its place (it is refused as not a regular file).
OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class NotPrivate(ShmoozeError):
    """A folder or file that must be this user's alone is not: nothing was written to it."""


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _is_ours(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def check_private_dir(path: str | os.PathLike[str]) -> None:
    """Raise :class:`NotPrivate` unless ``path`` is a real folder (not a symbolic link) owned by this
    user with no group or other permission bits."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise NotPrivate(f"refusing the folder {path}: it is a symbolic link (to {os.readlink(path)}), which "
                         f"another user may have planted; remove it, or set run_path to a folder of your own")
    if not stat.S_ISDIR(st.st_mode):
        raise NotPrivate(f"refusing {path}: it is not a folder; remove it, or set run_path elsewhere")
    if not _is_ours(st) or st.st_mode & 0o077:
        what = "chmod 700 it" if _is_ours(st) else "remove it (another user made it), or set run_path elsewhere"
        raise NotPrivate(f"refusing the folder {path}: owned by {_owner(st.st_uid)}, mode "
                         f"{stat.S_IMODE(st.st_mode):04o}; it must be yours alone (0700): {what}")


def _check_ancestors(path: Path) -> None:
    """The existing folder ``path`` and every folder above it: owned by root or this user, and not
    writable by other users unless sticky (``/tmp``), so nobody else can rename what is below."""
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        st = os.stat(folder)
        open_to_others = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid != os.getegid())
        if st.st_uid not in (0, os.geteuid()) or (open_to_others and not st.st_mode & stat.S_ISVTX):
            raise NotPrivate(f"refusing a folder under {folder}: owned by {_owner(st.st_uid)}, mode "
                             f"{stat.S_IMODE(st.st_mode):04o}, so another user could replace what is in it; "
                             f"choose a place only you and root can write to")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _make_missing(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents, each 0700; return those created, outermost first."""
    missing = []
    folder = path
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    made = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            check_private_dir(folder)  # someone made it meanwhile: used only if it is ours alone
            continue
        if stat.S_IMODE(os.lstat(folder).st_mode) != 0o700:
            os.chmod(folder, 0o700)  # a umask that took the owner's own bits
        made.append(folder)
    return made


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a folder only this user may use: created with mode 0700 (missing parents too),
    or, when it exists, checked (:func:`check_private_dir`); the folders above it must be safe
    (:func:`_check_ancestors`). Returns the absolute path."""
    folder = Path(os.path.abspath(path))
    existing = _nearest_existing(folder)
    _check_ancestors(existing if existing != folder else folder.parent)
    if not _make_missing(folder):
        check_private_dir(folder)
    return folder


def open_private(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """Open a file of a private folder: never through a symbolic link, only a regular file owned by
    this user; one that other users may read or write is made 0600 first (with a log line)."""
    try:
        fd = os.open(path, flags | OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotPrivate(f"refusing {path}: it is a symbolic link, which another user may have planted; "
                             f"remove it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _is_ours(st):
            raise NotPrivate(f"refusing {path}: {'not a regular file' if _is_ours(st) else 'owned by ' + _owner(st.st_uid)}"
                             f"; remove it")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("%s could be read by other users (mode %04o): it is 0600 now", path, stat.S_IMODE(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace ``path`` with ``data`` at once: a new 0600 file beside it (created, never reused), flushed
    to the disk, then renamed over it. A reader sees the old file or the new one, never a mix, and
    nobody can swap the file between the write and the rename without owning the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tighten(path: str | os.PathLike[str]) -> bool:
    """Make an existing file of this user 0600 when other users may read or write it (with a log
    line); True when it was changed. Links, other users' files and missing files are left alone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or not _is_ours(st) or not st.st_mode & 0o077:
        return False
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError as exc:
        log.warning("%s can be read by other users (mode %04o) and could not be changed: %s",
                    path, stat.S_IMODE(st.st_mode), exc)
        return False
    log.warning("%s could be read by other users (mode %04o): it is %04o now", path,
                stat.S_IMODE(st.st_mode), stat.S_IMODE(st.st_mode) & 0o700)
    return True


def private_state(path: str | os.PathLike[str], companions: Iterable[str] = ()) -> None:
    """Before a service opens one of its state files: its folder created if missing (0700, missing
    parents too; an existing folder, perhaps the application's own, is left as it is), and the file
    and its ``companions`` (suffixes: SQLite's ``-wal`` and ``-shm``) made 0600 if others may read them.
    New files are private through the services' umask (077)."""
    _make_missing(Path(os.path.dirname(os.path.abspath(path))))
    for name in (os.fspath(path), *(os.fspath(path) + suffix for suffix in companions)):
        tighten(name)
