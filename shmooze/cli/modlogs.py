"""``shmz logs UID [-f] [-n N] [--service NAME]``: what a module printed, through the gateway.

The module is found by asking each service for its ``output`` (its uid is unique to one service).
With ``-f`` it follows: it waits for the service's change events (a long poll on ``changes``) and
reads the new lines each ``output`` event announces, until interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from shmooze.errors import ServiceError, ShmoozeError


def services_of(client: Any) -> list[str]:
    """The gateway's services (from the dashboard's list, else the public settings' ports)."""
    try:
        return client.service_names()
    except (ShmoozeError, KeyError, TypeError):
        ports = client.settings().get("ports") or {}
        return sorted(name for name in ports if name != "wsgi")


def find(client: Any, uid: str, lines: int, service: str | None) -> tuple[Any, dict[str, Any]]:
    names = [service] if service else services_of(client)
    problems = []
    for name in names:
        try:
            return client.service(name), client.service(name).call("output", {"uid": uid, "lines": lines})
        except ServiceError:
            continue
        except ShmoozeError as exc:  # that service is down: the module may be in another
            problems.append(str(exc))
    asked = ", ".join(names) or "none"
    raise ShmoozeError(f"no service has a module {uid!r} (asked: {asked})" + "".join(f"; {p}" for p in problems))


def write(out: TextIO, answer: dict[str, Any]) -> None:
    if answer.get("note") and not answer["lines"]:  # a module that has printed nothing yet
        sys.stderr.write(f"shmz: {answer['note']}\n")
        sys.stderr.flush()
    if answer.get("missed"):
        out.write(f"[{answer['missed']} line(s) no longer kept]\n")
    for line in answer["lines"]:
        out.write(("! " if line["stream"] == "stderr" else "") + line["text"] + "\n")
    out.flush()


def show(client: Any, uid: str, lines: int = 40, follow: bool = False, service: str | None = None,
         out: TextIO = sys.stdout, wait: float = 20.0) -> None:
    svc, answer = find(client, uid, lines, service)
    write(out, answer)
    seen = answer["next"]
    version = svc.call("changes", {"since": 0, "timeout": 0})["version"]
    while follow:
        changes = svc.call("changes", {"since": version, "timeout": wait}, timeout=wait + 10)
        version = changes["version"]
        if changes.get("reset") or any(e.get("kind") == "output" and uid in e.get("lines", {})
                                       for e in changes.get("events", [])):
            answer = svc.call("output", {"uid": uid, "after": seen, "lines": 10_000})
            write(out, answer)
            seen = answer["next"]


def main(client: Any, words: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shmz logs", description="What a module printed.")
    parser.add_argument("uid")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.add_argument("-n", "--lines", type=int, default=40, help="how many of the last lines (default 40)")
    parser.add_argument("--service", default=None, help="the service holding the module (default: ask each)")
    opts = parser.parse_args(words)
    show(client, opts.uid, opts.lines, opts.follow, opts.service)
    return 0
