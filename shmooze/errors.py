"""The exceptions of shmooze, one root for everything a client or script can catch."""

from __future__ import annotations

import re


class ShmoozeError(Exception):
    """Root of every error shmooze raises on purpose."""


class SettingsError(ShmoozeError):
    """The settings file is missing, unreadable or malformed."""


class CommandError(ShmoozeError):
    """A command failed; its message goes to the client as ``error``.

    Raise it from a service command to answer ``success: false`` with a message a
    person can act on.
    """


class ServiceError(ShmoozeError):
    """The service answered ``success: false``."""

    def __init__(self, message: str, service: str = "", cmd: str = ""):
        super().__init__(message)
        self.service = service
        self.cmd = cmd


class TransportError(ShmoozeError):
    """The request did not get a command answer: connection refused, HTTP error, bad body."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Timeout(TransportError):
    """The service did not answer within the client's timeout."""


class NotTheService(TransportError):
    """Something answered on a service's port without proving it holds the service key: another
    program took the port, or it is another application's service."""

    def __init__(self, message: str):
        super().__init__(message, 502)


#: A Python exception's last line: ``ModuleNotFoundError: No module named 'x'`` (its module path dropped).
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\w*: .*)$")
#: Another line that says what went wrong (a shell's, an interpreter's or a runtime's complaint).
_SAYS_WHY = re.compile(r"error|exception|can't|cannot|no such|not found|fatal|denied|invalid|failed", re.IGNORECASE)


def exception_line(lines: list[str]) -> str | None:
    """The last Python exception line of some output (a traceback's end), without the exception's module."""
    found = [m.group(1) for line in lines if (m := _EXCEPTION_LINE.match(line.strip())) and not line[:1].isspace()]
    return found[-1] if found else None


def telling_line(lines: list[str], limit: int = 300) -> str | None:
    """Of a failed program's last lines of output, the one that says why it failed: the last Python
    exception line, else the last unindented line naming an error (``python: can't open file ...``),
    else the last line; None when there are none."""
    complaints = [line.strip() for line in lines if not line[:1].isspace() and _SAYS_WHY.search(line)]
    kept = [line.strip() for line in lines if line.strip()]
    found = exception_line(lines) or (complaints or kept or [""])[-1]
    return (found if len(found) <= limit else found[:limit - 3] + "...") or None
