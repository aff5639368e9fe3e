"""What a device profile's runtime settings need on the device, checked against the agent's
facts: which runtime and execution providers the profile will use there, or which package
the device lacks for them (refused at `hwnas agent install` and `hwnas devices check`)."""

from __future__ import annotations

from typing import Any

from hwnas_agent.protocol import ONNXRUNTIME, TENSORRT

from hwnas.config.models import DeviceProfile

# what provides each runtime or execution provider a profile may ask for, and how to get it
PROVIDED_BY = {
    TENSORRT: "TensorRT's Python bindings (JetPack: sudo apt install python3-libnvinfer; the "
              "agent's venv sees them on a Jetson, or with agent_install.system_site_packages)",
    ONNXRUNTIME: "onnxruntime (installed with the agent: run `hwnas agent install` again)",
    "CUDAExecutionProvider": "onnxruntime-gpu (x86: pip install onnxruntime-gpu into the "
                             "agent's venv; Jetson: NVIDIA's onnxruntime_gpu wheel for JetPack)",
    "TensorrtExecutionProvider": "onnxruntime-gpu built with TensorRT (NVIDIA's Jetson wheel, or "
                                 "onnxruntime-gpu with TensorRT installed on x86)",
    "QNNExecutionProvider": "onnxruntime-qnn (the agent's qnn extra, Python >= 3.11) or an "
                            "onnxruntime built with QNN",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}


def runtime_use(profile: DeviceProfile, facts: dict[str, Any]) -> tuple[str, str | None]:
    """(what the profile's settings will use on the device, None) where it has them all, else
    (what it asked for, what is missing and which package provides it)."""
    runtimes = facts.get("runtimes") or {}
    name = profile.runtime.name
    providers = list(profile.runtime.execution_providers)
    if name == TENSORRT:
        asked = TENSORRT
        found = runtimes.get(TENSORRT) or {}
        if found.get("version"):
            return f"tensorrt {found['version']} ({found.get('location')})", None
        return asked, _missing(profile, TENSORRT, found.get("error"))
    asked = f"onnxruntime with {', '.join(providers)}"
    found = runtimes.get(ONNXRUNTIME) or {}
    if not found.get("version"):
        return asked, _missing(profile, ONNXRUNTIME, found.get("error"))
    lacking = [p for p in providers if p not in (found.get("execution_providers") or [])]
    if lacking:
        return asked, _missing(profile, lacking[0], None,
                               f"onnxruntime {found['version']} there offers "
                               f"{', '.join(found.get('execution_providers') or [])}")
    return f"onnxruntime {found['version']} with {', '.join(providers)}", None


def _missing(profile: DeviceProfile, what: str, error: str | None, has: str = "") -> str:
    why = f"it fails to import: {error}" if error else has or "it is not installed there"
    return (f"{profile.name}: the profile's runtime asks for {what}, which the device lacks "
            f"({why}); install {PROVIDED_BY.get(what, what)}, or change runtime: in the profile")
