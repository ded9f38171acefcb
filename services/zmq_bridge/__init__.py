"""The 0MQ bridge: the reference's control protocol and console feed in front of the NATS API."""
