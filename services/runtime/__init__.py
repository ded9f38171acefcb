"""What every service process shares: its NATS boundary, arguments, logging, child processes."""
