"""`hwnas agent install` where the device has its own accelerated onnxruntime (a Jetson's
onnxruntime-gpu, a Qualcomm board's onnxruntime built with QNN): the agent uses it, and
PyPI's onnxruntime, which has the same module name and would shadow it, is not installed. A
profile asking for a runtime neither the device nor the agent's own packages offer is refused
before anything on the device changes. Over a real sshd, offline (wheels from the controller).

The device's own onnxruntime here is a user-site install (PYTHONUSERBASE, as `pip install
--user onnxruntime-gpu` makes one): a venv with the system's site packages sees it exactly as
it sees JetPack's /usr/lib/python3/dist-packages."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hwnas.config import load_device_profile
from hwnas.errors import DeviceError
from hwnas.remote.install import RemoteAgent
from hwnas.testing.sshd import free_port
from tests.remote.test_install_offline import NO_INDEX, install


def device_with_own_runtime(ssh_world, tmp_path: Path) -> Path:
    """The device's user site holds onnxruntime and the onnxruntime-qnn plugin (QNN)."""
    try:
        import onnxruntime
        import onnxruntime_qnn
    except ImportError as exc:
        pytest.skip(f"the controller's venv lacks {exc.name}, the device's own runtime here")
    userbase = tmp_path / "device-userbase"
    site = Path(subprocess.run(["python3", "-c", "import site; print(site.getusersitepackages())"],
                               env={**os.environ, "PYTHONUSERBASE": str(userbase)},
                               capture_output=True, text=True, check=True).stdout.strip())
    site.mkdir(parents=True)
    for module in (onnxruntime, onnxruntime_qnn):
        package = Path(module.__file__).parent
        (site / package.name).symlink_to(package)
        for info in package.parent.glob(f"{package.name}-*.dist-info"):
            (site / info.name).symlink_to(info)
    server = ssh_world.server
    server.config.write_text(server.config.read_text()
                             + NO_INDEX.rstrip("\n") + f" PYTHONUSERBASE={userbase}\n")
    server.stop()
    server.start()
    return site


def qnn_profile(ssh_world, tmp_path: Path, system_site: bool) -> tuple[Path, Path]:
    remote_dir = tmp_path / "device-home" / "agent"
    profile = ssh_world.profile("qnn-board", agent_port=free_port(), remote_dir=str(remote_dir))
    profile.write_text(profile.read_text()
                       + "runtime: {execution_providers: [QNNExecutionProvider]}\n"
                       + f"agent_install: {{system_site_packages: {str(system_site).lower()}}}\n")
    return profile, remote_dir


def test_the_devices_own_accelerated_onnxruntime_is_used_not_shadowed(ssh_world, tmp_path):
    site = device_with_own_runtime(ssh_world, tmp_path)
    profile, remote_dir = qnn_profile(ssh_world, tmp_path, system_site=True)
    agent, logged, status = install(profile)
    text = "\n".join(logged)
    assert status.agent_version == "0.1.0", text
    assert "the device's own onnxruntime" in text and "is not installed" in text, text
    shipped = {name.split("-")[0].lower() for name in agent.shipped.files}
    assert "numpy" in shipped and "hwnas_agent" in shipped, shipped
    assert not shipped & {"onnxruntime", "onnxruntime_qnn"}, shipped
    venv_site = next((remote_dir / "venv" / "lib").glob("python3*/site-packages"))
    assert not list(venv_site.glob("onnxruntime*")), list(venv_site.glob("onnxruntime*"))
    remote = RemoteAgent(load_device_profile(profile))
    try:  # the agent imports the device's own, with its QNN provider
        runtime = remote.client().facts()["runtimes"]["onnxruntime"]
        assert runtime["location"].startswith(str(site)), runtime
        assert "QNNExecutionProvider" in runtime["execution_providers"], runtime
    finally:
        remote.stop()
        remote.close()
    assert any("measures with onnxruntime" in line and "QNNExecutionProvider" in line
               for line in logged), text


def test_a_runtime_nobody_provides_is_refused_before_the_device_changes(ssh_world, tmp_path):
    """CUDA on a device without onnxruntime-gpu, and TensorRT where the venv would not see the
    system's packages: refused with the package that provides it, nothing made on the device."""
    device_with_own_runtime(ssh_world, tmp_path)
    profile, remote_dir = qnn_profile(ssh_world, tmp_path, system_site=True)
    text = profile.read_text()
    profile.write_text(text.replace("QNNExecutionProvider", "CUDAExecutionProvider"))
    with pytest.raises(DeviceError) as caught:
        install(profile)
    message = str(caught.value)
    assert "asks for CUDAExecutionProvider" in message and "onnxruntime-gpu" in message
    assert "onnxruntime 1." in message and "offers" in message  # what the device's own has
    assert "Nothing was changed" in message
    profile.write_text(text.replace("runtime: {execution_providers: [QNNExecutionProvider]}",
                                    "runtime: {name: tensorrt}")
                       .replace("system_site_packages: true", "system_site_packages: false"))
    with pytest.raises(DeviceError) as caught:
        install(profile)
    message = str(caught.value)
    assert "asks for tensorrt" in message and "python3-libnvinfer" in message
    assert "system_site_packages is off" in message
    assert not (tmp_path / "device-home").exists()  # not even the folder was made
    assert not remote_dir.exists()
