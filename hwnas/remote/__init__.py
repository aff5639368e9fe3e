"""Reaching agents: transports (local loopback now; SSH next), the client, device sessions."""
