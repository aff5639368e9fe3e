from __future__ import annotations

import pytest

from hwnas.testing.sshd import LoopbackDevice, keygen


@pytest.fixture()
def ssh_world(tmp_path):
    """A real sshd on loopback with a trusted host key, and the real agent behind it on the
    'device' (this machine's 127.0.0.1)."""
    device = LoopbackDevice(tmp_path, keygen(tmp_path / "id_ed25519"))
    try:
        yield device
    finally:
        device.stop()
