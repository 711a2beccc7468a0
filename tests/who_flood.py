"""A client that floods a gateway with commands that change state, for tests/test_who.py.

``python -m tests.who_flood PORT SOURCE FORWARDED_FOR RATE SECONDS``: sends ``whoami`` to the service
``whoami`` at RATE a second (on one kept-alive connection, from the source address SOURCE, with
``X-Forwarded-For: FORWARDED_FOR``) for SECONDS; prints ``limited`` when first refused, and at the
end what it got as one JSON line. Its own
process: its work takes nothing from the measuring client's interpreter.
"""

from __future__ import annotations

import http.client
import json
import sys
import time


def main() -> None:
    port, source, forwarded_for, rate, seconds = sys.argv[1:6]
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=15, source_address=(source, 0))
    headers = {"Content-Type": "application/json", "X-Forwarded-For": forwarded_for}
    got = {"ok": 0, "limited": 0, "retry_after": [], "read_when_limited": None, "callers": []}
    gap = 1.0 / float(rate)
    end = time.monotonic() + float(seconds)
    next_at = time.monotonic()
    while time.monotonic() < end:
        conn.request("POST", "/whoami", b'{"cmd": "whoami"}', headers)
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        if resp.status == 429:
            got["limited"] += 1
            if resp.getheader("Retry-After") not in got["retry_after"]:
                got["retry_after"].append(resp.getheader("Retry-After"))
            if got["read_when_limited"] is None:  # a read while limited
                print("limited", flush=True)
                conn.request("POST", "/whoami", b'{"cmd": "status"}', headers)
                read = conn.getresponse()
                read.read()
                got["read_when_limited"] = read.status
        elif resp.status == 200:
            got["ok"] += 1
            if answer["result"] not in got["callers"]:
                got["callers"].append(answer["result"])
        next_at += gap
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(json.dumps(got), flush=True)


if __name__ == "__main__":
    main()
