"""The HTTP floor: a bare WSGI app that reads the body and answers a fixed JSON document.

Behind the gateway it also does the least every service must: a signed request (``Shmooze-Auth``)
is checked with the application's service key and its answer proven (``Shmooze-Proof``), as the
gateway refuses to forward to a port that cannot prove it holds the key. The key comes from the
settings in ``$SHMOOZE_SETTINGS``; without them the floor answers unsigned requests only.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from shmooze import caller, servicekey, settings

ANSWER = b'{"success":true,"result":{"level":50,"muted":false}}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER))),
           ("Cache-Control", "no-store")]
_KEY = servicekey.load(settings.load()) if os.environ.get(settings.ENV_VAR) else None
VERIFIER = servicekey.Verifier(_KEY) if _KEY else None


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Read the request body (as a real service must), answer the fixed document (proven when signed)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    auth = environ.get(servicekey.AUTH_ENVIRON)
    if auth is None or VERIFIER is None:
        start_response("200 OK", HEADERS)
        return [ANSWER]
    nonce = VERIFIER.check(auth, environ.get("PATH_INFO") or "/", body, environ.get(caller.ENVIRON, ""))
    start_response("200 OK", [*HEADERS, (servicekey.PROOF_HEADER, VERIFIER.proof(nonce, 200, ANSWER))])
    return [ANSWER]
