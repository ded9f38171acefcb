"""The queue server's services; each runs as its own process and talks only over NATS."""
