"""What each module prints, kept per module: the recent lines in memory (for the ``output`` command,
the dashboard and ``shmz logs``) and, when the service has a folder for it, a file per module with
a size cap and rotation (``UID.log``, then ``UID.log.1`` ...).

Lines are numbered from 1 per module, so a reader asks for what came after the last line it saw.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from shmooze.system import private

log = logging.getLogger(__name__)


def _open_private(path: Path) -> Any:
    """A module's output file, for appending: 0600, never through a symbolic link (what a module
    prints may be private)."""
    return os.fdopen(private.open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab", buffering=0)


class ModuleOutput:
    """The output of one module (every module handle of one uid, restarts included)."""

    def __init__(self, uid: str, folder: Path | None = None, keep_lines: int = 1000,
                 max_bytes: int = 1 << 20, backups: int = 2):
        self.uid = uid
        self.path = folder / f"{uid}.log" if folder is not None else None
        self.max_bytes = max_bytes
        self.backups = backups
        self.count = 0  # lines so far
        self._lines: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_lines)
        self._lock = threading.Lock()
        self._file: Any = None
        self._size = 0

    def add(self, stream: str, text: str) -> int:
        """Keep one line (``stream`` is ``stdout`` or ``stderr``); return its number."""
        now = time.time()
        with self._lock:
            self.count += 1
            self._lines.append({"n": self.count, "time": round(now, 3), "stream": stream, "text": text})
            if self.path is not None:
                self._write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} {stream} {text}\n")
            return self.count

    def since(self, after: int = 0, limit: int = 200) -> dict[str, Any]:
        """Lines numbered after ``after`` (the newest ``limit`` of them); ``next`` is the number to ask
        after next time; ``missed`` counts lines no longer kept in memory."""
        with self._lock:
            lines = [line for line in self._lines if line["n"] > after]
            count = self.count
        lines = lines[len(lines) - max(0, limit):] if len(lines) > max(0, limit) else lines
        first = lines[0]["n"] if lines else count + 1
        missed = max(0, first - max(0, after) - 1)
        return {"uid": self.uid, "lines": lines, "next": count, "missed": missed,
                "file": str(self.path) if self.path is not None else None}

    def _write(self, text: str) -> None:
        path = self.path
        if path is None:
            return
        data = text.encode("utf-8", "replace")
        try:
            if self._file is None:
                private.private_state(path)
                self._file = _open_private(path)
                self._size = self._file.tell()
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate(path)
            self._file.write(data)
            self._size += len(data)
        except (OSError, private.NotPrivate) as exc:
            log.warning("cannot keep the output of module %s in %s: %s", self.uid, self.path, exc)
            self.path = None  # keep it in memory only from now on
            self.close()

    def _rotate(self, path: Path) -> None:
        self._file.close()
        for i in range(self.backups, 0, -1):
            older = Path(f"{path}.{i - 1}") if i > 1 else path
            if older.exists():
                os.replace(older, f"{path}.{i}")
        if self.backups == 0:
            path.unlink(missing_ok=True)
        self._file = _open_private(path)
        self._size = 0

    def close(self) -> None:
        with_file, self._file = self._file, None
        if with_file is not None:
            with_file.close()

    def remove_files(self) -> None:
        """Delete the files (the module is forgotten)."""
        self.close()
        if self.path is not None:
            for i in range(self.backups + 1):
                Path(f"{self.path}.{i}" if i else self.path).unlink(missing_ok=True)
