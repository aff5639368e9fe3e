"""What a device profile's runtime settings need on the device: where install takes it from
(the device's own site packages, or the agent's packages from PyPI), decided before anything
changes there; then, from the agent's facts, which runtime and execution providers the profile
will use, or which package the device lacks for them (refused at `hwnas agent install` and
`hwnas devices check`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hwnas_agent.protocol import ONNXRUNTIME, TENSORRT

from hwnas.config.models import DeviceProfile
from hwnas.errors import DeviceError
from hwnas.remote.wheels import DevicePlatform

# what provides each runtime or execution provider a profile may ask for, and how to get it
PROVIDED_BY = {
    TENSORRT: "TensorRT's Python bindings (JetPack: sudo apt install python3-libnvinfer; the "
              "agent's venv sees them on a Jetson, or with agent_install.system_site_packages)",
    ONNXRUNTIME: "onnxruntime (installed with the agent: run `hwnas agent install` again)",
    "CUDAExecutionProvider": "onnxruntime-gpu (x86: pip install --user onnxruntime-gpu; "
                             "Jetson: NVIDIA's onnxruntime_gpu wheel for JetPack)",
    "TensorrtExecutionProvider": "onnxruntime-gpu built with TensorRT (NVIDIA's Jetson wheel, or "
                                 "onnxruntime-gpu with TensorRT installed on x86)",
    "QNNExecutionProvider": "onnxruntime-qnn (the agent's qnn extra, Python >= 3.11) or an "
                            "onnxruntime built with QNN",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
}


# what the agent's own onnxruntime from PyPI offers everywhere, and the extras that add a provider
OWN_PROVIDERS = ("CPUExecutionProvider", "AzureExecutionProvider")
PROVIDER_EXTRAS = {"QNNExecutionProvider": "qnn"}


@dataclasses.dataclass(frozen=True)
class RuntimeSource:
    """Where the profile's runtime comes from on the device."""
    own_onnxruntime: bool  # False: the device's own (a Jetson's onnxruntime-gpu) is used
    extras: tuple[str, ...]  # the agent's extras that provide it (qnn)
    constraints: tuple[str, ...]  # what the agent's other packages must stay within
    note: str  # one line for the install log; empty where nothing is worth saying


def runtime_source(profile: DeviceProfile, platform: DevicePlatform, system_site: bool,
                   fitting_extras: set[str]) -> RuntimeSource:
    """The device's own onnxruntime where it offers every accelerator provider the profile
    asks for and the venv will see it (PyPI's would shadow it: the same module name); the
    agent's extras where they provide them; otherwise refused, before anything changes on the
    device. ``fitting_extras``: the extras the device's Python can have."""
    site = platform.site if system_site else {}
    if profile.runtime.name == TENSORRT:
        found = site.get("tensorrt") or {}
        if found.get("version"):
            return RuntimeSource(True, (), (), f"tensorrt {found['version']} from the device "
                                               f"({found.get('location')})")
        raise DeviceError(_refusal(profile, TENSORRT, site, system_site, found.get("error")))
    wanted = [p for p in profile.runtime.execution_providers if p not in OWN_PROVIDERS]
    if not wanted:
        return RuntimeSource(True, (), (), "")
    theirs = site.get("onnxruntime") or {}
    if all(p in (theirs.get("providers") or ()) for p in wanted):
        numpy = (site.get("numpy") or {}).get("version") or ""
        # built against NumPy 1, it fails to import beside a NumPy 2 of ours
        constraints = ("numpy<2",) if numpy.split(".")[0] == "1" else ()
        return RuntimeSource(False, (), constraints, (
            f"the device's own onnxruntime {theirs.get('version')} ({theirs.get('location')}) "
            f"offers {', '.join(wanted)}: the agent uses it, and onnxruntime from PyPI (which "
            f"would shadow it) is not installed"))
    extras = tuple(sorted({PROVIDER_EXTRAS[p] for p in wanted
                           if PROVIDER_EXTRAS.get(p) in fitting_extras}))
    lacking = [p for p in wanted if PROVIDER_EXTRAS.get(p) not in extras]
    if lacking:
        raise DeviceError(_refusal(profile, lacking[0], site, system_site, theirs.get("error")))
    return RuntimeSource(True, extras, (), "")


def _refusal(profile: DeviceProfile, what: str, site: dict[str, Any], system_site: bool,
             error: str | None) -> str:
    theirs = site.get("onnxruntime") or {}
    if not system_site:
        seen = ("the agent's venv would not see the device's own site packages "
                "(agent_install.system_site_packages is off)")
    elif error:
        seen = f"the device's own fails to import: {error}"
    elif what != TENSORRT and theirs.get("version"):
        seen = (f"the device's own onnxruntime {theirs['version']} offers "
                f"{', '.join(theirs.get('providers') or [])}")
    else:
        seen = "the device's Python does not have it"
    ours = "" if what == TENSORRT else "; the agent's onnxruntime from PyPI offers CPU only"
    return (f"{profile.name}: the profile's runtime asks for {what}, which the device lacks "
            f"({seen}{ours}); install {PROVIDED_BY.get(what, what)} for the device's Python, "
            f"with agent_install.system_site_packages: true (the default on a Jetson) so that "
            f"the agent sees it, or change runtime: in the profile. Nothing was changed on the "
            f"device")


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
