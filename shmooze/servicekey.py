"""The service key: how a service knows the gateway and the app's own tools, and how it proves itself.

Every application has one secret key that browsers never see. Where it comes from:

- ``service_key`` in the settings (a string; every host of an application spread over several
  machines needs the same one), else
- the file ``service_key_path``, else ``service.key`` in the run folder (``run_path``) when one is
  set, else in a private folder under the user's state directory named after the settings file; the
  first process of the app that needs it makes it (mode 0600, created whole with ``link``, so two
  processes starting at once agree on one key).

It is never sent. A client that holds it signs each request and the service proves each answer:

- request header ``Shmooze-Auth: TIME.NONCE.MAC``, ``MAC = BLAKE2b-256 keyed with the key, of
  "shmooze-request" TIME NONCE PATH CALLER BODY`` (keyed BLAKE2 is a MAC by design, and half the cost of
  HMAC-SHA256 here): the service takes it only within :data:`WINDOW` seconds of its own clock and
  only once (a replayed request is refused). ``CALLER`` is the ``Shmooze-Caller`` header's value
  (empty when there is none: :mod:`shmooze.caller`), so nobody can change whom a signed command is
  recorded for;
- answer header ``Shmooze-Proof``, the same MAC of "shmooze-answer" NONCE STATUS BODY: the client
  takes the answer only with it, so a process that took the service's port (during a restart, say)
  cannot pass its answers off as the service's. Before a client sends anything on a new
  connection it sends an empty signed batch and checks its proof (:data:`HELLO`): no command, and
  none of its arguments, ever reaches a process that has not proven it holds the key.

This module does no I/O beyond reading and making the key file.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import hmac
import itertools
import logging
import os
import secrets
import stat
import threading
import time
from typing import TYPE_CHECKING

from shmooze.errors import SettingsError
from shmooze.system.private import private_dir

if TYPE_CHECKING:
    from shmooze.settings import Settings

log = logging.getLogger(__name__)

#: The request header that carries a signature, and the answer header that carries a proof.
AUTH_HEADER = "Shmooze-Auth"
PROOF_HEADER = "Shmooze-Proof"
#: The same as WSGI environ keys.
AUTH_ENVIRON = "HTTP_SHMOOZE_AUTH"
#: Seconds a signed request is good for, either side of the service's clock (hosts' clocks must agree
#: to within this).
WINDOW = 60
#: The body of the request that opens every connection: an empty batch, answered ``[]``.
HELLO = b"[]"
KEY_BYTES = 32


class BadSignature(Exception):
    """A request's ``Shmooze-Auth`` is malformed, stale, replayed or wrong."""


# -- where the key lives --------------------------------------------------------------------

def key_file(settings: Settings) -> str | None:
    """The key's file for these settings, or None when the settings name no file (made in code)."""
    if settings.service_key_path:
        return settings.service_key_path
    if settings.run_path:
        return os.path.join(settings.run_path, "service.key")
    path = settings.path
    if not path or path.startswith("<"):
        return None
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    return os.path.join(state, "shmooze", "keys", digest, "service.key")


def load(settings: Settings, create: bool = True) -> bytes | None:
    """The application's service key, or None when it has none (settings made in code, with no
    ``service_key``). With ``create``, a missing key file is made."""
    if settings.service_key:  # (at least 16 characters: shmooze.registry)
        return settings.service_key.encode()
    path = key_file(settings)
    if path is None:
        return None
    try:
        return read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    return make_key(path)


def read_key(path: str) -> bytes:
    """Read a key file, refusing one that another user owns or could read or change, or a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise SettingsError(f"{path}: the service key file is a symbolic link; refusing it (remove it)") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise SettingsError(f"{path}: the service key file belongs to uid {info.st_uid}, not to this "
                                f"user ({os.geteuid()}): remove it, or set service_key_path")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SettingsError(f"{path}: the service key file is open to other users (mode "
                                f"{stat.S_IMODE(info.st_mode):o}): make it 0600 (chmod 600 {path})")
        data = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(data) < 16:
        raise SettingsError(f"{path}: the service key file is empty or too short (at least 16 characters)")
    return data


def make_key(path: str) -> bytes:
    """Make the key file (or read the one another process made first): written whole to a private
    temporary file, then linked to its name, so no reader ever sees half a key."""
    private_dir(os.path.dirname(path))  # 0700, ours alone (else refused, naming the folder)
    key = secrets.token_hex(KEY_BYTES).encode()
    temp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)
    except FileExistsError:
        return read_key(path)  # another process of the app made it first: theirs is the key
    finally:
        os.unlink(temp)
    log.info("made the application's service key in %s", path)
    return key


# -- signing and proving ----------------------------------------------------------------------

def mac_key(key: bytes) -> bytes:
    """The key of the MACs, made from the application's key (of any length)."""
    return hashlib.blake2b(key, digest_size=32, person=b"shmooze-key").digest()


def _request_mac(key: bytes, stamp: bytes, nonce: bytes, path: bytes, body: bytes, caller: bytes = b"") -> str:
    return hashlib.blake2b(b"shmooze-request\n%s\n%s\n%s\n%s\n%s" % (stamp, nonce, path, caller, body), key=key,
                           digest_size=32).hexdigest()


def answer_proof(key: bytes, nonce: bytes, status: int, body: bytes) -> str:
    """The ``Shmooze-Proof`` of an answer to the request that carried ``nonce`` (``key``: a :func:`mac_key`)."""
    return hashlib.blake2b(b"shmooze-answer\n%s\n%d\n%s" % (nonce, status, body), key=key,
                           digest_size=32).hexdigest()


class Signer:
    """The client's side: signs requests, checks proofs."""

    def __init__(self, key: bytes):
        self.key = mac_key(key)
        self._pid = 0
        self._prefix = b""
        self._count = itertools.count()

    def _nonce(self) -> bytes:
        """Unique for the key's life: random per process (a forked worker makes its own), then a count."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._prefix = pid, secrets.token_hex(8).encode()
        return b"%s%x" % (self._prefix, next(self._count))

    def sign(self, body: bytes, path: str = "/", caller: bytes = b"") -> tuple[str, bytes]:
        """The ``Shmooze-Auth`` value for a request, and its nonce (to check the answer's proof).
        ``caller``: the ``Shmooze-Caller`` header's value the request carries (none: empty)."""
        stamp = b"%d" % int(time.time())
        nonce = self._nonce()
        mac = _request_mac(self.key, stamp, nonce, path.encode("latin-1"), body, caller)
        return f"{stamp.decode()}.{nonce.decode()}.{mac}", nonce

    def proven(self, nonce: bytes, status: int, body: bytes, proof: str | None) -> bool:
        """Whether ``proof`` shows the answer came from a holder of the key."""
        return proof is not None and hmac.compare_digest(proof, answer_proof(self.key, nonce, status, body))


class Verifier:
    """The service's side: checks signatures (each nonce taken once) and makes proofs."""

    def __init__(self, key: bytes, window: int = WINDOW):
        self.key = mac_key(key)
        self.window = window
        self._seen: set[bytes] = set()
        self._order: collections.deque[tuple[float, bytes]] = collections.deque()
        self._lock = threading.Lock()

    def check(self, value: str, path: str, body: bytes, caller: str = "") -> bytes:
        """The nonce of a good signature; raise :class:`BadSignature` (saying why) otherwise. ``caller``:
        the request's ``Shmooze-Caller`` header as it came (none: empty)."""
        parts = value.strip().split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not 8 <= len(parts[1]) <= 64:
            raise BadSignature("malformed Shmooze-Auth header")
        stamp, nonce, mac = (p.encode("latin-1", "replace") for p in parts)
        now = time.time()
        if abs(now - int(stamp)) > self.window:
            raise BadSignature(f"the signature's time is {now - int(stamp):+.0f} s from this host's clock "
                               f"(over {self.window} s: are the hosts' clocks set?)")
        expected = _request_mac(self.key, stamp, nonce, path.encode("latin-1", "replace"), body,
                                caller.encode("latin-1", "replace"))
        if not hmac.compare_digest(mac, expected.encode()):
            raise BadSignature("the signature does not match the service key")
        with self._lock:
            self._forget_old(now)
            if nonce in self._seen:
                raise BadSignature("this signed request was already taken once (a replay)")
            self._seen.add(nonce)
            self._order.append((now + 2 * self.window, nonce))
        return nonce

    def _forget_old(self, now: float) -> None:
        order = self._order
        while order and order[0][0] < now:
            self._seen.discard(order.popleft()[1])

    def proof(self, nonce: bytes, status: int, body: bytes) -> str:
        return answer_proof(self.key, nonce, status, body)
