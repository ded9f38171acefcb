"""Who is at the other end of a loopback TCP connection: the OS user that owns its socket.

TCP has no SO_PEERCRED, but on one machine both ends of a loopback connection are listed in
`/proc/net/tcp` (or `tcp6`) with the uid of the process that made each socket: the client's
socket is the line whose local address is our peer and whose remote address is us.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))

Address = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalized(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address, with an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as IPv4."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _kernel_hex(packed: bytes) -> str:
    """An address as the kernel prints it: each 32-bit word in host (little-endian) order."""
    return "".join(
        f"{int.from_bytes(packed[i : i + 4], 'little'):08X}" for i in range(0, len(packed), 4)
    )


def proc_fields(addr: Address) -> tuple[str, ...]:
    """How `/proc/net/tcp{,6}` may write `addr`: as IPv4, and for IPv4 also as IPv4-mapped IPv6."""
    ip, port = addr
    forms = [ip.packed]
    if isinstance(ip, ipaddress.IPv4Address):
        forms.append(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed)
    return tuple(f"{_kernel_hex(f)}:{port:04X}" for f in forms)


def owner_in_table(lines: Iterable[str], peer: Address, local: Address) -> int | None:
    """The uid of the socket whose local end is `peer` and remote end is `local`."""
    peers, locals_ = proc_fields(peer), proc_fields(local)
    for line in lines:
        fields = line.split(maxsplit=8)
        if len(fields) >= 8 and fields[1] in peers and fields[2] in locals_:
            return int(fields[7])
    return None


# Linux's sock_diag netlink interface (linux/inet_diag.h): one socket looked up by its
# addresses, in microseconds, where /proc/net/tcp walks every socket (~10 ms on a busy host).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")  # family, protocol, extensions, states
_SOCKID = struct.Struct("!HH16s16s")  # ports and addresses in network order
_SOCKID_REST = struct.Struct("=III")  # interface, cookie (INET_DIAG_NOCOOKIE: all ones)
_MSG_UID_OFFSET = 4 + 48 + 12  # family..retrans, the sockid, expires/rqueue/wqueue
ALL_STATES = 0xFFFFFFFF


def _packed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, family: int) -> bytes:
    if family == socket.AF_INET6 and isinstance(ip, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed
    return ip.packed.ljust(16, b"\0")


def diag_owner(peer: Address, local: Address) -> int | None:
    """The uid of the TCP socket whose source is `peer` and destination `local`, asked of
    the kernel by netlink; None when it has no such socket or cannot be asked."""
    families = [socket.AF_INET, socket.AF_INET6]
    if isinstance(peer[0], ipaddress.IPv6Address):
        families = [socket.AF_INET6]
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            for family in families:
                sockid = _SOCKID.pack(
                    peer[1], local[1], _packed(peer[0], family), _packed(local[0], family)
                ) + _SOCKID_REST.pack(0, 0xFFFFFFFF, 0xFFFFFFFF)
                body = _REQ.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid
                header = _NLMSGHDR.pack(
                    _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0
                )
                nl.send(header + body)
                reply = nl.recv(65536)
                _, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
                if kind == NLMSG_ERROR:
                    continue  # no such socket in this family
                start = _NLMSGHDR.size + _MSG_UID_OFFSET
                return int(struct.unpack_from("=I", reply, start)[0])
    except OSError:
        return None
    return None


def socket_owner(peer: Address, local: Address, tables: Iterable[Path] = PROC_TABLES) -> int | None:
    """The uid owning the client's end of the loopback connection `peer` -> `local`, or None
    when it is not found (gone already, another network namespace, not Linux)."""
    uid = diag_owner(peer, local)
    if uid is not None:
        return uid
    for table in tables:
        try:
            text = table.read_text()
        except OSError:
            continue
        uid = owner_in_table(text.splitlines(), peer, local)
        if uid is not None:
            return uid
    return None


@dataclass(frozen=True)
class Connection:
    """The two ends of an accepted TCP connection, seen from this side."""

    local: Address
    peer: Address

    @property
    def loopback(self) -> bool:
        return self.peer[0].is_loopback

    def __str__(self) -> str:
        ip, port = self.peer
        return f"{ip}:{port}"


def connection_of(fd: int) -> Connection | None:
    """The ends of the TCP connection on `fd` (a descriptor libzmq owns: it is duplicated,
    never closed); None when it is not a connected TCP socket any more."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            if s.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            local, peer = s.getsockname(), s.getpeername()
    except OSError:
        return None
    return Connection(
        local=(normalized(local[0]), int(local[1])), peer=(normalized(peer[0]), int(peer[1]))
    )


def cut(fd: int) -> None:
    """End the connection on `fd` at the TCP level; libzmq then sees it fail and drops it."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as s:
        s.shutdown(socket.SHUT_RDWR)
