"""The queue service (the manager): queue, running item, state machine, locks."""
