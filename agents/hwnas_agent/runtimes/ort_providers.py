"""onnxruntime's execution providers: built into the package, or a plugin library registered
at run time (``onnxruntime-qnn`` ships the QNN HTP backend that way), registered once per
process; and which of them is a simulator rather than the device (emulation)."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, Optional, Tuple

# provider -> the pip package that ships it as a plugin library (and its library getter)
PLUGIN_PACKAGES = {"QNNExecutionProvider": "onnxruntime_qnn"}
QNN = "QNNExecutionProvider"
# QNN backends by library name, for reading what a provider option asks for
_QNN_BACKENDS = {"libQnnHtp.so": "htp", "QnnHtp.dll": "htp", "libQnnCpu.so": "cpu",
                 "QnnCpu.dll": "cpu", "libQnnGpu.so": "gpu", "QnnGpu.dll": "gpu"}
# architectures whose QNN HTP backend is the real NPU; elsewhere it is Qualcomm's simulator
_NPU_MACHINES = ("aarch64", "arm64", "ARM64")
registered: Dict[str, str] = {}  # provider -> library path registered in this process


def _plugin_library(provider: str) -> Optional[Tuple[str, str]]:
    """(library path, package version) of the plugin package for ``provider``, if installed."""
    package = PLUGIN_PACKAGES.get(provider)
    if package is None:
        return None
    try:
        module = __import__(package)
    except ImportError:
        return None
    return module.get_library_path(), getattr(module, "__version__", "?")


def register_plugin(ort: Any, provider: str) -> bool:
    if provider in registered:
        return True
    found = _plugin_library(provider)
    if found is None or not hasattr(ort, "register_execution_provider_library"):
        return False
    ort.register_execution_provider_library(provider, found[0])
    registered[provider] = found[0]
    return True


def available_providers() -> List[str]:
    """Built-in providers, then installed plugin providers (named as sessions take them)."""
    import onnxruntime as ort

    names = list(ort.get_available_providers())
    for provider in PLUGIN_PACKAGES:
        if provider not in names and _plugin_library(provider) is not None \
                and hasattr(ort, "register_execution_provider_library"):
            names.append(provider)
    return names


def plugin_versions() -> Dict[str, str]:
    """Installed plugin packages and their versions, for the device's facts."""
    found = {}
    for provider, package in PLUGIN_PACKAGES.items():
        library = _plugin_library(provider)
        if library is not None:
            found[package] = library[1]
    return found


def resolve_options(provider: str, options: Dict[str, str], plugin: bool) -> Dict[str, str]:
    """A bare QNN backend library name means the one shipped beside the plugin."""
    resolved = {k: str(v) for k, v in options.items()}
    backend = resolved.get("backend_path")
    if plugin and provider == QNN and backend and os.path.basename(backend) == backend:
        directory = os.path.dirname(registered[provider])
        if os.path.exists(os.path.join(directory, backend)):
            resolved["backend_path"] = os.path.join(directory, backend)
    return resolved


def qnn_backend(options: Dict[str, str]) -> str:
    """htp | cpu | gpu | ... from backend_type or backend_path (QNN's default is cpu)."""
    if options.get("backend_type"):
        return options["backend_type"].lower()
    path = options.get("backend_path", "")
    return _QNN_BACKENDS.get(os.path.basename(path), "cpu" if not path else path)


def emulation(providers: List[str], options: List[Dict[str, str]],
              machine: Optional[str] = None) -> Optional[str]:
    """Why a latency from these providers is not a device latency, or None when it is.
    Qualcomm's HTP backend on anything but an ARM machine is its x86 simulator."""
    machine = machine or platform.machine()
    for provider, provider_options in zip(providers, options):
        if provider == QNN and qnn_backend(provider_options) == "htp" \
                and machine not in _NPU_MACHINES:
            return ("QNN HTP backend simulated on %s: the latency is the simulator's, not the "
                    "NPU's; use it for compatibility and output fidelity only" % machine)
    return None
