"""The original framework's ``shmooze.lib.cmdlog``: a logger that appends one JSON line per message."""

from __future__ import annotations

import json
from typing import Any


class FileLogger:
    def __init__(self, filename: str):
        self.filename = filename

    def log(self, msg: Any) -> None:
        with open(self.filename, "a") as f:
            json.dump(msg, f)
            f.write("\n")
