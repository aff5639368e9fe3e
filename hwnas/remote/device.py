"""Open a device named by a profile: a connected, version-checked AgentClient."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from hwnas_agent.protocol import MeasureRequest

from hwnas.config.models import DeviceProfile, SSHConnection
from hwnas.remote.client import AgentClient
from hwnas.remote.local import LocalAgentProcess
from hwnas.remote.ssh import SSHSession, SSHTransport
from hwnas.remote.transport import LoopbackTransport


@contextlib.contextmanager
def open_device(profile: DeviceProfile, state_dir: Path | None = None) -> Iterator[AgentClient]:
    """A connected, version-checked client; the local agent is started and stopped here."""
    connection = profile.connection
    if isinstance(connection, SSHConnection):
        session = SSHSession(profile.name, connection)
        client = AgentClient(SSHTransport(session, connection.agent_port, connection.retries),
                             profile.name)
        try:
            client.hello()
            yield client
        finally:
            session.close()
        return
    agent = LocalAgentProcess(state_dir)
    port = agent.start()
    try:
        client = AgentClient(LoopbackTransport(port, description=f"agent of {profile.name}"),
                             profile.name)
        client.hello()
        yield client
    finally:
        agent.stop()


def measure_request(profile: DeviceProfile, sha256: str) -> MeasureRequest:
    """The device profile's runtime and methodology, for one model."""
    runtime, method = profile.runtime, profile.measurement
    return MeasureRequest(
        model_sha256=sha256, runtime=runtime.name,
        execution_providers=list(runtime.execution_providers),
        provider_options=[dict(o) for o in runtime.provider_options],
        disable_cpu_fallback=runtime.disable_cpu_fallback,
        intra_op_threads=runtime.intra_op_threads, batch_size=method.batch_size,
        warmup_iterations=method.warmup_iterations, warmup_seconds=method.warmup_seconds,
        min_iterations=method.min_iterations, min_seconds=method.min_seconds,
        rounds=method.rounds, unstable_cv=method.unstable_cv, timeout_s=method.timeout_s,
        power_source=profile.power.source, power_options=dict(profile.power.options),
        power_min_samples=profile.power.min_samples, idle_seconds=profile.power.idle_seconds,
        tensorrt_flags=list(runtime.tensorrt_flags), cpu_affinity=list(method.cpu_affinity),
        cooldown_below_c=method.cooldown_below_c,
    )
