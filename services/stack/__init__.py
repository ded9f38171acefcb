"""The embedded stack and the launchers of the servers it runs (NATS, Kafka, Tiled)."""
