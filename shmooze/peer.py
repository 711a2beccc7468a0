"""Who holds the other end of a loopback TCP connection: the kernel says, by socket inode and uid.

A module's ports listen on 127.0.0.1, so any local process could connect first
and pose as the module. For each accepted connection the service asks the kernel
(``sock_diag`` over netlink, one exact lookup; ``/proc/net/tcp`` as the fallback)
for the inode and owner of the peer's socket, then looks for that inode among the
open files (``/proc/PID/fd``) of the module's processes.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import Iterable

from shmooze.procutil import socket_inodes, tcp_sockets

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
        return None
    _length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data)
    if kind != SOCK_DIAG_BY_FAMILY:
        return None  # NLMSG_ERROR: no such socket (it closed already)
    offset = _HEADER.size + 4 + _SOCKID.size + _SOCKID_TAIL.size
    if len(data) < offset + _MSG_TAIL.size:
        return None
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
    """``(inode, uid)`` of the socket at the other end of an accepted loopback connection, or None."""
    try:
        family = conn.family
        peer, local = conn.getpeername()[:2], conn.getsockname()[:2]
    except OSError:
        return None
    try:
        found = _sock_diag(family, peer, local)
    except OSError as exc:
        log.debug("sock_diag failed (%s); reading /proc/net", exc)
        found = None
    if found is None or found[0] == 0:
        found = _proc_net(family, peer, local)
    return found


def held_by(inode: int, pids: Iterable[int]) -> int | None:
    """The first of ``pids`` that has the socket ``inode`` open, or None."""
    for pid in pids:
        if inode in socket_inodes(pid):
            return pid
    return None


class Verdict:
    """Whether a connection comes from the module, and what was found (for the log)."""

    def __init__(self, ok: bool, why: str):
        self.ok = ok
        self.why = why

    def __bool__(self) -> bool:
        return self.ok


def check(conn: socket.socket, pids: Iterable[int], uid: int | None = None) -> Verdict:
    """Is the peer of ``conn`` one of ``pids`` (the module and its descendants)?

    Where the kernel does not say which socket is at the other end, only the
    owner's uid is checked (when known): other users are refused at least.
    """
    uid = os.getuid() if uid is None else uid
    found = peer_socket(conn)
    if found is None:
        return Verdict(True, "peer unknown to the kernel tables; not checked")
    inode, owner = found
    if owner != uid:
        return Verdict(False, f"peer socket belongs to uid {owner}, not {uid}")
    holder = held_by(inode, pids)
    if holder is None:
        return Verdict(False, f"peer socket (inode {inode}, uid {owner}) is held by no process of the module")
    return Verdict(True, f"held by pid {holder}")
