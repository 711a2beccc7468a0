"""Reading the logs of a run: the last lines of a file, and following files as they grow.

Each service writes one log in the run folder (supervisord's ``stdout_logfile``, which also holds
the output of the service's modules). supervisord rotates a log by renaming it and starting a new
file; following notices that (the file shrank or is another file) and reads the new one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TextIO


def tail_lines(path: Path, count: int, chunk: int = 64 * 1024) -> list[str]:
    """The last ``count`` lines of a file (without their newlines); empty when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            data = b""
            while size > 0 and data.count(b"\n") <= count:
                step = min(chunk, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


class _Followed:
    """One file being followed: where we are in it, and which file (inode) it is."""

    def __init__(self, path: Path, label: str):
        self.path = path
        self.label = label
        self.inode: int | None = None
        self.offset = 0
        self.partial = b""

    def start_at_end(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        self.inode, self.offset = st.st_ino, st.st_size

    def read_new(self) -> list[str]:
        try:
            st = self.path.stat()
        except OSError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:  # rotated or truncated: start over
            self.inode, self.offset, self.partial = st.st_ino, 0, b""
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        self.offset += len(data)
        *whole, self.partial = (self.partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in whole]


def show(files: dict[str, Path], out: TextIO, lines: int = 40, follow: bool = False,
         keep_going: Callable[[], bool] = lambda: True, interval: float = 0.2) -> None:
    """Print the last ``lines`` of each file (prefixed with its label when there are several), then,
    with ``follow``, every new line as it is written until ``keep_going()`` is false."""
    several = len(files) > 1
    followed = []
    for label, path in files.items():
        prefix = f"{label} | " if several else ""
        for line in tail_lines(path, lines):
            out.write(prefix + line + "\n")
        item = _Followed(path, label)
        item.start_at_end()
        followed.append(item)
    out.flush()
    while follow and keep_going():
        for item in followed:
            prefix = f"{item.label} | " if several else ""
            for line in item.read_new():
                out.write(prefix + line + "\n")
        out.flush()
        time.sleep(interval)
