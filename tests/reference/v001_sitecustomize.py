"""Installed as `sitecustomize` in .venv-reference-v001: pyzmq as bluesky-queueserver 0.0.1 knew it.

Its CLI checks `if socket.connect(address): raise RuntimeError("Failed to connect ...")`, which
held while pyzmq's `connect` returned None. pyzmq 20 made it return a context manager (always
true), and no pyzmq older than 23 installs on today's Python. The CLI itself runs unchanged.
"""

import zmq

_connect = zmq.Socket.connect


def _connect_returning_none(self: zmq.Socket, addr: str) -> None:  # type: ignore[type-arg]
    _connect(self, addr)


zmq.Socket.connect = _connect_returning_none  # type: ignore[method-assign, assignment]
