"""Signed-in sessions: a cookie signed with a secret derived from the service key.

The cookie (``shmooze_session``, HttpOnly, SameSite=Strict, Secure behind TLS, ``Path`` the gateway's
prefix) holds a user name, a fingerprint of their password hash and a session id, signed and
timestamped by itsdangerous. It is good while all of these hold:

* its signature is right and it is younger than ``session_max_age`` seconds;
* the user is still in ``users`` with the same password hash (a new password ends every session);
* its id was not signed out: signing out records the id in a file beside the service key that every
  gateway worker of the host reads (several gateway hosts each keep their own: there the cookie's age
  bounds a signed-out cookie that was copied to another host).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from typing import NamedTuple

from itsdangerous import BadSignature, URLSafeTimedSerializer

from shmooze.gateway.users import Identity, UserTable
from shmooze.system.private import private_dir

log = logging.getLogger(__name__)

COOKIE = "shmooze_session"
#: Bytes of signed-out ids after which the file is written anew without the expired ones.
COMPACT_AFTER = 256 * 1024


def session_secret(service_key: bytes | None) -> bytes:
    """The key cookies are signed with: derived from the service key (random, for this process only,
    without one)."""
    if service_key is None:
        return secrets.token_bytes(32)
    return hmac.new(service_key, b"shmooze session cookies", hashlib.sha256).digest()


class Revocations:
    """Signed-out session ids (until their cookies would have expired anyway), shared through a file."""

    def __init__(self, path: str | None, max_age: float):
        self.path = path
        self.max_age = max_age
        self.ids: dict[str, float] = {}  # id -> wall-clock time after which its cookie is expired anyway
        self._read = (0, 0)  # (inode, bytes) of the file read so far
        self._lock = threading.Lock()

    def revoke(self, sid: str) -> None:
        until = time.time() + self.max_age
        self.ids[sid] = until
        if self.path is None:
            return
        line = f"{sid} {until:.0f}\n".encode()
        private_dir(os.path.dirname(self.path))  # beside the service key: this user's alone
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)  # one write of a short line with O_APPEND: whole, among several workers
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > COMPACT_AFTER:
            self._compact()

    def _compact(self) -> None:
        """Write the file anew with the ids that are still good (a new inode: readers start over)."""
        assert self.path is not None
        self._catch_up()
        now = time.time()
        kept = "".join(f"{sid} {until:.0f}\n" for sid, until in self.ids.items() if until > now)
        fresh = f"{self.path}.{os.getpid()}.new"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, kept.encode())
        finally:
            os.close(fd)
        os.replace(fresh, self.path)  # (a sign-out written meanwhile by another worker is lost: rare, bounded)

    def revoked(self, sid: str) -> bool:
        if self.path is not None:
            self._catch_up()
        return sid in self.ids

    def _catch_up(self) -> None:
        try:
            info = os.stat(self.path)  # type: ignore[arg-type]
        except FileNotFoundError:
            return
        if (info.st_ino, info.st_size) == self._read:
            return
        with self._lock:
            with open(self.path, "rb") as f:  # type: ignore[arg-type]
                ino = os.fstat(f.fileno()).st_ino
                start = self._read[1] if ino == self._read[0] else 0  # compacted: read it anew
                f.seek(start)
                data = f.read()
            complete = data[:data.rfind(b"\n") + 1]
            self._read = (ino, start + len(complete))
            now = time.time()
            for line in complete.decode("ascii", "replace").splitlines():
                sid, _, until = line.partition(" ")
                try:
                    if float(until) > now:
                        self.ids[sid] = float(until)
                except ValueError:
                    continue


class Session(NamedTuple):
    identity: Identity
    sid: str


class Sessions:
    """Makes and checks session cookies for the users of :class:`UserTable`."""

    def __init__(self, users: UserTable, secret: bytes, max_age: float, revocations: Revocations):
        self.users = users
        self.max_age = max_age
        self.serializer = URLSafeTimedSerializer(secret, salt="shmooze-session")
        self.revocations = revocations
        self._checked: dict[str, tuple[str, str, str, float]] = {}  # cookie -> (name, fingerprint, id, signed at)

    def make(self, identity: Identity) -> str:
        """A new cookie value for a user who just signed in."""
        assert identity.name is not None
        payload = {"u": identity.name, "f": self.users.fingerprint(identity.name), "s": secrets.token_urlsafe(12)}
        return self.serializer.dumps(payload)

    def check(self, cookie: str) -> Session | None:
        """The session of a cookie value, None when it is not (any longer) good."""
        known = self._checked.get(cookie)
        if known is None:
            try:
                payload, signed_at = self.serializer.loads(cookie, max_age=int(self.max_age) + 1, return_timestamp=True)
                known = (str(payload["u"]), str(payload["f"]), str(payload["s"]), signed_at.timestamp())
            except (BadSignature, KeyError, TypeError):
                return None
            if len(self._checked) >= 4096:
                self._checked.clear()
            self._checked[cookie] = known
        name, fp, sid, signed_at = known
        if time.time() - signed_at > self.max_age or self.revocations.revoked(sid):
            return None
        if fp != self.users.fingerprint(name) or self.users.fingerprint(name) is None:
            return None  # no such user any longer, or a new password
        return Session(Identity(name, self.users.role(name)), sid)

    def end(self, cookie: str) -> bool:
        """Sign a session out: its cookie is refused from now on. False: it was not a good one."""
        session = self.check(cookie)
        if session is None:
            return False
        self.revocations.revoke(session.sid)
        return True


def cookie_from(header: str) -> str | None:
    """The session cookie's value in a ``Cookie`` header."""
    if COOKIE not in header:
        return None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip('"') or None
    return None
