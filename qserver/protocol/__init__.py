"""Wire types shared by the client and every service: one module per boundary."""
