"""The HTTP gateway: HTTP routes and WebSockets in front of the NATS API (docs/http.md)."""
