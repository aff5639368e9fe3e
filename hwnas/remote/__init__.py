"""Reaching agents: transports (loopback, SSH: transport.py, ssh/), the client, device sessions,
the local agent, install over SSH, the device pool, checks and accelerator screening."""
