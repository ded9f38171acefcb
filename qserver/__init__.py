"""Client side of the queue server: protocol types, the NATS client and the `qserver` CLI."""

__version__ = "0.1.0"
