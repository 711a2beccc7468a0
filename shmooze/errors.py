"""The exceptions of shmooze, one root for everything a client or script can catch."""

from __future__ import annotations


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
