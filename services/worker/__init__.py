"""The worker service: supervises the environment process, which runs the RunEngine."""
