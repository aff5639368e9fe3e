"""Transport overhead per trial over SSH, against scp of the same file over the same sshd.

    .venv/bin/python benchmarks/ssh_transport.py

A real sshd on a loopback port and the real agent behind it. For a 10 MB and a 50 MB model:
connect (SSH handshake + hello), ship (upload through the direct-tcpip channel, which
includes the agent's sha256 check and its one load of the model), submit and collect a
short job; and `scp` of the same bytes. Medians of 5 runs, alternating ours and scp.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, save, table  # noqa: E402

from hwnas_agent.protocol import MeasureRequest  # noqa: E402

from hwnas.config import load_device_profile  # noqa: E402
from hwnas.records import Artifact  # noqa: E402
from hwnas.remote.client import AgentClient  # noqa: E402
from hwnas.remote.ssh import SSHSession, SSHTransport  # noqa: E402
from hwnas.testing.models import matmul_onnx  # noqa: E402
from hwnas.testing.sshd import LoopbackDevice, keygen  # noqa: E402

RUNS = 5


def main() -> int:
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key = keygen(folder / "id_ed25519")
        device = LoopbackDevice(folder, key)
        server, known_hosts = device.server, device.known_hosts
        profile = load_device_profile(device.profile("dev"))
        try:
            for megabytes in (10, 50):
                phases: dict[str, list[float]] = {"connect": [], "ship": [], "submit_collect": [],
                                                  "total": [], "scp": []}
                for run in range(RUNS):
                    path = matmul_onnx(folder / f"m{megabytes}-{run}.onnx", megabytes, run)
                    artifact = Artifact.from_file(path, {}, 0)  # new bytes: really shipped
                    started = time.perf_counter()
                    session = SSHSession(profile.name, profile.connection)
                    client = AgentClient(SSHTransport(session, profile.connection.agent_port), "dev",
                                         device.agent.token)
                    client.hello()
                    connected = time.perf_counter()
                    client.ensure_model(artifact)
                    shipped = time.perf_counter()
                    client.measure(MeasureRequest(model_sha256=artifact.sha256, warmup_iterations=1,
                                                  warmup_seconds=0.0, min_iterations=1,
                                                  min_seconds=0.0, rounds=1))
                    collected = time.perf_counter()
                    session.close()
                    phases["connect"].append(connected - started)
                    phases["ship"].append(shipped - connected)
                    phases["submit_collect"].append(collected - shipped)
                    phases["total"].append(collected - started)
                    scp_started = time.perf_counter()
                    subprocess.run(["scp", "-q", "-P", str(server.port), "-i", str(key), "-o",
                                    f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes",
                                    str(path), f"{server.user}@127.0.0.1:{folder}/scp-copy.onnx"],
                                   check=True)
                    phases["scp"].append(time.perf_counter() - scp_started)
                    path.unlink()
                med = {k: median(v) for k, v in phases.items()}
                figures[f"{megabytes}MB"] = {"size_mb": artifact.size_bytes / 1e6, "runs": RUNS,
                                             "median_s": med, "samples_s": phases,
                                             "ship_over_scp": med["ship"] / med["scp"],
                                             "trial_transport_over_scp": med["total"] / med["scp"]}
                rows.append([f"{artifact.size_bytes / 1e6:.1f} MB", f"{med['connect']:.3f}",
                             f"{med['ship']:.3f}", f"{med['submit_collect']:.3f}",
                             f"{med['total']:.3f}", f"{med['scp']:.3f}",
                             f"{med['ship'] / med['scp']:.2f}", f"{med['total'] / med['scp']:.2f}"])
        finally:
            device.stop()
    print(table(["model", "connect s", "ship s", "submit+collect s", "total s", "scp s",
                 "ship/scp", "total/scp"], rows))
    save("ssh_transport", {"command": ".venv/bin/python benchmarks/ssh_transport.py",
                           "figures": figures,
                           "note": "ship includes the agent's sha256 check and one model load in a "
                                   "separate process; scp only copies bytes"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
