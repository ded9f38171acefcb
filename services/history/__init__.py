"""The history service: plan history (durable, in JetStream) and, later, the run catalog."""
