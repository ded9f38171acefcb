"""The OS user of a loopback peer, read from the kernel's socket tables."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator

import pytest

from services.zmq_bridge.peers import (
    PROC_TABLES,
    connection_of,
    cut,
    diag_owner,
    is_loopback_host,
    owner_in_table,
    proc_fields,
    socket_owner,
)

LO = ipaddress.ip_address("127.0.0.1")
# Two lines of /proc/net/tcp: the bridge's accepted end (uid 1000) and the client (uid 1001).
TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:EA60 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 11 1
   1: 0100007F:C350 0100007F:EA60 01 00000000:00000000 00:00000000 00000000  1001        0 12 1
"""


def test_the_client_end_is_the_line_whose_local_address_is_the_peer() -> None:
    assert owner_in_table(TABLE.splitlines(), peer=(LO, 50000), local=(LO, 60000)) == 1001
    assert owner_in_table(TABLE.splitlines(), peer=(LO, 60000), local=(LO, 50000)) == 1000
    assert owner_in_table(TABLE.splitlines(), peer=(LO, 50001), local=(LO, 60000)) is None


def test_ipv4_peers_of_an_ipv6_socket_are_written_mapped() -> None:
    fields = proc_fields((LO, 80))
    assert fields == ("0100007F:0050", "0000000000000000FFFF00000100007F:0050")
    assert proc_fields((ipaddress.ip_address("::1"), 80)) == (
        "00000000000000000000000001000000:0050",
    )


@pytest.fixture
def loopback_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted


def test_the_owner_of_a_real_loopback_connection_is_this_process_user(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = loopback_pair
    conn = connection_of(accepted.fileno())
    assert conn is not None and conn.loopback
    assert conn.peer[1] == client.getsockname()[1]
    assert socket_owner(conn.peer, conn.local) == os.getuid()


def test_netlink_and_the_proc_tables_agree_on_the_owner(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    _, accepted = loopback_pair
    conn = connection_of(accepted.fileno())
    assert conn is not None
    lines = [line for table in PROC_TABLES for line in table.read_text().splitlines()]
    from_proc = owner_in_table(lines, conn.peer, conn.local)
    assert diag_owner(conn.peer, conn.local) == from_proc == os.getuid()
    assert diag_owner((LO, 1), conn.local) is None


def test_a_connection_not_in_the_tables_has_no_owner(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    _, accepted = loopback_pair
    conn = connection_of(accepted.fileno())
    assert conn is not None
    assert socket_owner((LO, 1), conn.local) is None


def test_cut_ends_the_connection_but_leaves_the_descriptor_open(
    loopback_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = loopback_pair
    cut(accepted.fileno())
    client.settimeout(10)
    assert client.recv(1) == b""  # the peer sees the end
    accepted.settimeout(10)
    assert accepted.recv(1) == b""  # ours is shut for reading too: libzmq sees it end
    assert accepted.fileno() >= 0  # the descriptor stays libzmq's to close


def test_a_descriptor_that_is_not_a_connected_socket_has_no_connection() -> None:
    r, w = os.pipe()
    try:
        assert connection_of(r) is None
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("[::1]", True),
        ("*", False),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
