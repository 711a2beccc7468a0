"""Who holds the other end of a loopback TCP connection: the kernel says, by socket inode and uid.

A module's ports listen on 127.0.0.1, so any local process could connect first
and pose as the module. For each accepted connection the service asks the kernel
(``sock_diag`` over netlink, one exact lookup; ``/proc/net/tcp`` as the fallback)
for the inode and owner of the peer's socket, then looks for that inode among the
open files (``/proc/PID/fd``) of the module's processes.

The check fails closed: a connection whose peer the kernel cannot name (reset before it was
looked at, or closed) is refused, and a peer of another user is refused on the kernel's answer
alone, before any ``/proc`` scan, so a flood of strangers costs one netlink round trip each.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import Callable, Iterable

from shmooze.system.procutil import socket_inodes, tcp_sockets

log = logging.getLogger(__name__)

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2 head: family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order)
_SOCKID_TAIL = struct.Struct("=III")  # interface, cookie[2]
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode (after family..retrans + sockid)


def _addr_bytes(family: int, host: str) -> bytes:
    return socket.inet_pton(family, host).ljust(16, b"\0")


def _sock_diag(family: int, peer: tuple, local: tuple) -> tuple[int, int] | None:
    """(inode, uid) of the socket bound to ``peer`` and connected to ``local``, via one netlink lookup."""
    sockid = _SOCKID.pack(peer[1], local[1], _addr_bytes(family, peer[0]), _addr_bytes(family, local[0])) + \
        _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    message = _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.send(message)
        data = nl.recv(8192)
    if len(data) < _HEADER.size:
        raise OSError(errno.EPROTO, "short netlink answer")
    _length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data)
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, _HEADER.size)[0]
        if code == errno.ENOENT:
            return None  # no such socket: it is gone already
        raise OSError(code, os.strerror(code))
    if kind != SOCK_DIAG_BY_FAMILY:
        raise OSError(errno.EPROTO, f"unexpected netlink answer {kind}")
    offset = _HEADER.size + 4 + _SOCKID.size + _SOCKID_TAIL.size
    if len(data) < offset + _MSG_TAIL.size:
        raise OSError(errno.EPROTO, "short sock_diag answer")
    _exp, _rq, _wq, uid, inode = _MSG_TAIL.unpack_from(data, offset)
    return inode, uid


def _proc_net_address(family: int, host: str, port: int) -> str:
    raw = socket.inet_pton(family, host)
    # /proc/net/tcp prints each 32-bit word of the address in host byte order.
    words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    hexed = "".join(struct.pack("=I", struct.unpack(">I", w)[0]).hex().upper() for w in words)
    return f"{hexed}:{port:04X}"


def _proc_net(family: int, peer: tuple, local: tuple) -> tuple[int, int] | None:
    """The same lookup by reading ``/proc/net/tcp`` or ``tcp6`` (slower: one line per socket)."""
    want_local = _proc_net_address(family, peer[0], peer[1])
    want_remote = _proc_net_address(family, local[0], local[1])
    for fields in tcp_sockets(ipv6=family == socket.AF_INET6):
        if fields[1] == want_local and fields[2] == want_remote:
            return int(fields[9]), int(fields[7])
    return None


def peer_socket(conn: socket.socket) -> tuple[int, int] | None:
    """``(inode, uid)`` of the socket at the other end of an accepted loopback connection, or None
    when it cannot be found (reset or gone). The inode is 0 once its owner has closed it."""
    try:
        family = conn.family
        peer, local = conn.getpeername()[:2], conn.getsockname()[:2]  # ENOTCONN once reset
    except OSError:
        return None
    try:
        return _sock_diag(family, peer, local)
    except OSError as exc:  # no sock_diag here (not: no such socket, which is an answer)
        log.debug("sock_diag failed (%s); reading /proc/net", exc)
    return _proc_net(family, peer, local)


def held_by(inode: int, pids: Iterable[int]) -> int | None:
    """The first of ``pids`` that has the socket ``inode`` open, or None."""
    for pid in pids:
        if inode in socket_inodes(pid):
            return pid
    return None


class Verdict:
    """Whether a connection comes from the module, what was found (for the log), and the kind of
    refusal (``uid 65534``, ...: refusals are counted by kind and logged once per module start)."""

    __slots__ = ("ok", "why", "kind")

    def __init__(self, ok: bool, why: str, kind: str = ""):
        self.ok = ok
        self.why = why
        self.kind = kind

    def __bool__(self) -> bool:
        return self.ok


def check(conn: socket.socket, pids: Iterable[int] | Callable[[], Iterable[int]],
          uid: int | None = None) -> Verdict:
    """Is the peer of ``conn`` one of ``pids`` (the module and its descendants)?

    Call it right after ``accept``, before reading: what a refused peer wrote is never read.
    ``pids`` may be a function, called only for a peer of the right user. Fails closed: a peer
    the kernel cannot name is refused.

    The module's own connection cannot be missed by racing it: its socket is in its file table
    from ``socket()``, before ``connect``, and the process is in the module's cgroup (or process
    tree) from its start, so both are in place before the connection can be accepted.
    """
    uid = os.getuid() if uid is None else uid
    found = peer_socket(conn)
    if found is None:
        return Verdict(False, "peer socket not found (reset or closed before it could be identified)",
                       "peer gone before it was identified")
    inode, owner = found
    if inode == 0:  # (closed by its owner: no file holds it; a TIME_WAIT one shows uid 0)
        return Verdict(False, f"peer socket already closed by its owner (uid {owner})",
                       "peer gone before it was identified")
    if owner != uid:
        return Verdict(False, f"peer socket belongs to uid {owner}, not {uid}", f"uid {owner}")
    holder = held_by(inode, pids() if callable(pids) else pids)
    if holder is None:
        return Verdict(False, f"peer socket (inode {inode}, uid {owner}) is held by no process of the module",
                       f"uid {owner}, not the module's processes")
    return Verdict(True, f"held by pid {holder}")
