"""The original framework's ``shmooze.lib.bot``: one command to a service through the gateway.

``request(message, endpoint)`` posts ``message`` (as ``text/json``, as the original did) and returns
the answer's result, or raises ``Exception`` with its error.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

DEFAULT_ENDPOINT = "http://localhost:8080/queue"


def request(message: Any, endpoint: str = DEFAULT_ENDPOINT, timeout: float = 30.0) -> Any:
    req = urllib.request.Request(endpoint, data=json.dumps(message).encode(), headers={"Content-type": "text/json"})
    with urllib.request.urlopen(req, timeout=timeout) as handler:
        result = json.loads(handler.read())
    if result["success"]:
        return result.get("result")
    raise Exception(result["error"])
