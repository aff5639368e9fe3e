"""The agent's dependency wheels for one device platform, downloaded on the controller.

A device in an offline clinic cannot reach a package index; the controller can. So install
asks the device what it is (machine, CPython version, glibc, Jetson or not: ``PROBE``), turns
that into pip's platform tags (every manylinux_2_17 .. manylinux_2_<its glibc> for its
machine) and runs ``pip download --only-binary :all:`` for exactly that platform. The set is
cached under ``<cache>/device-wheels/<platform>/<requirements hash>/`` with a ``wheelset.json``
(name -> sha256) written last, so a second install for the same platform and requirements
needs neither pip nor the network. pip itself is in the set: an old venv's pip (JetPack 5's
20.0) cannot read manylinux_2_27 tags, so the shipped pip is installed first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from hwnas.errors import DeviceError

# run by the device's interpreter (Python >= 3.8, stdlib only); one JSON line back: what it
# is, and the runtimes its own site packages hold (JetPack's tensorrt, NVIDIA's onnxruntime-gpu,
# a Qualcomm board's onnxruntime built with QNN), which a venv that sees them may use
PROBE = """
import json, os, platform, sys
def imported(name):
    try:
        module = __import__(name)
    except ImportError:
        return None
    except Exception as exc:
        return {"error": "%s: %s" % (type(exc).__name__, exc)}
    return {"version": getattr(module, "__version__", None),
            "location": os.path.dirname(getattr(module, "__file__", "") or "")}
ort = imported("onnxruntime")
if ort and "error" not in ort:
    import onnxruntime
    ort["providers"] = list(onnxruntime.get_available_providers())
    if imported("onnxruntime_qnn") and "QNNExecutionProvider" not in ort["providers"] \
            and hasattr(onnxruntime, "register_execution_provider_library"):
        ort["providers"].append("QNNExecutionProvider")
print(json.dumps({"machine": platform.machine(), "python": list(sys.version_info[:2]),
                  "implementation": sys.implementation.name, "libc": list(platform.libc_ver()),
                  "jetson": os.path.exists("/etc/nv_tegra_release"),
                  "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
                  "site": {"onnxruntime": ort, "tensorrt": imported("tensorrt"),
                           "numpy": imported("numpy")}}))
"""
OLDEST_GLIBC = 17  # manylinux2014: the oldest tag today's wheels use
# PEP 600 names and their legacy aliases (wheels carry either, often both)
LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
# what pip -vv says of an index page it could not fetch (its download then finds "no version")
INDEX_UNREACHABLE = r"Could not fetch URL \S+: connection error[^\n]*|ProxyError[^\n]*"


class WheelMissing(DeviceError):
    """A dependency publishes no wheel for the device's platform."""


class IndexUnreachable(DeviceError):
    """The controller cannot reach the package index to download the device's wheels."""


@dataclasses.dataclass(frozen=True)
class DevicePlatform:
    machine: str  # uname -m as the device's Python sees it: aarch64, x86_64, armv7l
    python: tuple[int, int]
    implementation: str  # cpython
    glibc: tuple[int, int] | None  # None: another libc (musl) or none found
    jetson: bool
    # module -> {version, location[, providers] | error} that the interpreter imports outside
    # any venv of ours (empty where it runs inside one: a new venv would not see those)
    site: dict = dataclasses.field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, device: str, text: str) -> "DevicePlatform":
        try:
            found = json.loads(text.strip().splitlines()[-1])
            libc, version = found["libc"]
            numbers = re.match(r"^(\d+)\.(\d+)", version or "")
            site = {} if found.get("venv") else \
                {k: v for k, v in (found.get("site") or {}).items() if v is not None}
            return cls(str(found["machine"]), (int(found["python"][0]), int(found["python"][1])),
                       str(found["implementation"]),
                       (int(numbers.group(1)), int(numbers.group(2)))
                       if libc == "glibc" and numbers else None, bool(found["jetson"]), site)
        except (ValueError, KeyError, IndexError, TypeError):
            raise DeviceError(f"{device}: the platform probe answered {text.strip()[-300:]!r}; "
                              f"run `python3 -c \"import platform; print(platform.libc_ver())\"` "
                              f"there to see what its Python reports") from None

    @property
    def cp(self) -> str:
        return f"cp{self.python[0]}{self.python[1]}"

    @property
    def key(self) -> str:
        glibc = f"glibc{self.glibc[0]}.{self.glibc[1]}" if self.glibc else "noglibc"
        return f"{self.machine}-{self.cp}-{glibc}"

    def describe(self) -> str:
        glibc = f"glibc {self.glibc[0]}.{self.glibc[1]}" if self.glibc else "no glibc"
        return f"{self.machine}, CPython {self.python[0]}.{self.python[1]}, {glibc}"

    def pip_platforms(self) -> list[str]:
        """Every manylinux tag the device's pip accepts, newest first."""
        if self.glibc is None or self.glibc[0] != 2:
            return []
        tags = []
        for minor in range(self.glibc[1], OLDEST_GLIBC - 1, -1):
            tags.append(f"manylinux_2_{minor}_{self.machine}")
            if minor in LEGACY:
                tags.append(f"{LEGACY[minor]}_{self.machine}")
        return tags


@dataclasses.dataclass(frozen=True)
class WheelSet:
    folder: Path
    sha256: dict[str, str]  # file name -> sha256

    @property
    def paths(self) -> list[Path]:
        return [self.folder / name for name in sorted(self.sha256)]


def requirements(agent_wheel: Path) -> list[Requirement]:
    """The agent wheel's own Requires-Dist (one source of truth: agents/pyproject.toml)."""
    with zipfile.ZipFile(agent_wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode("utf-8")
    return [Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def dependencies(agent_wheel: Path, platform: DevicePlatform, extras: list[str],
                 without: set[str], constraints: tuple[str, ...] = ()) -> list[str]:
    """The agent's requirements (and its extras') for the device's Python, less the packages
    ``without`` (the device's own onnxruntime stands in for ours), plus ``constraints`` (e.g.
    numpy<2 where the device's own onnxruntime was built against NumPy 1)."""
    version = f"{platform.python[0]}.{platform.python[1]}"
    wanted = []
    for requirement in requirements(agent_wheel):
        marker = requirement.marker
        if marker is not None and not any(
                marker.evaluate({"extra": extra, "python_version": version})
                for extra in ["", *extras]):
            continue
        if requirement.name.lower().replace("_", "-") not in without:
            wanted.append(f"{requirement.name}{requirement.specifier}")
    return wanted + list(constraints)


def unfit_extra(platform: DevicePlatform, agent_wheel: Path, extra: str) -> str | None:
    """The requirement of the agent's ``extra`` that the device's Python cannot have (its
    python_version marker excludes it), or None where the extra fits."""
    version = f"{platform.python[0]}.{platform.python[1]}"

    def holds(marker, name: str) -> bool:  # under some Python version
        return any(marker.evaluate({"extra": name, "python_version": v}) for v in ("0.0", "99.99"))

    for requirement in requirements(agent_wheel):
        marker = requirement.marker
        if marker is None or not holds(marker, extra) or holds(marker, ""):
            continue  # not a requirement of this extra alone
        if not marker.evaluate({"extra": extra, "python_version": version}):
            return str(requirement)
    return None


def check_extras(device: str, platform: DevicePlatform, agent_wheel: Path,
                 extras: list[str]) -> None:
    """An extra whose packages are not for this Python (a python_version marker) is refused:
    pip would skip it silently and the runtime asked for would be missing on the device."""
    for extra in extras:
        unfit = unfit_extra(platform, agent_wheel, extra)
        if unfit:
            raise WheelMissing(
                f"{device}: the agent's extra '{extra}' needs {unfit}, not available for "
                f"{platform.describe()}; use a Python that satisfies its marker on the device "
                f"(agent_install.python in the profile) or drop it from agent_install.extras")


def wheel_set(device: str, platform: DevicePlatform, agent_wheel: Path, extras: list[str],
              cache: Path, log=print, only: list[str] | None = None) -> WheelSet:
    """The dependency wheels (and pip) for ``platform``, from the cache or downloaded now:
    the agent wheel's with its extras, or exactly the requirements ``only`` (dependencies())."""
    tags = platform.pip_platforms()
    if platform.implementation != "cpython" or not tags:
        raise WheelMissing(
            f"{device}: no wheels can be chosen for {platform.describe()} "
            f"({platform.implementation}): offline install needs CPython on a glibc Linux; let "
            f"the device install from its own index with `agent_install: {{index: device}}` "
            f"in its profile")
    check_extras(device, platform, agent_wheel, extras)
    wanted = [f"{agent_wheel}[{','.join(sorted(extras))}]" if extras else str(agent_wheel)] \
        if only is None else list(only)
    wanted.append("pip")
    spec = hashlib.sha256(json.dumps([[str(r) for r in requirements(agent_wheel)],
                                      sorted(extras)] + ([] if only is None else [only])
                                     ).encode()).hexdigest()[:16]
    folder = cache / "device-wheels" / platform.key / spec
    index = folder / "wheelset.json"
    if index.exists():
        found = WheelSet(folder, json.loads(index.read_text()))
        if all(p.exists() for p in found.paths):
            return found
    log(f"{device}: downloading the agent's wheels for {platform.describe()}")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
                   "--python-version", f"{platform.python[0]}.{platform.python[1]}",
                   "--implementation", "cp", "--abi", platform.cp, "-d", scratch,
                   "--disable-pip-version-check", "--progress-bar", "off",
                   "-vv"]  # -vv: pip names an index page it could not fetch only there
        for tag in tags:
            command += ["--platform", tag]
        done = subprocess.run(command + wanted, capture_output=True, text=True)
        if done.returncode != 0:
            raise download_error(device, platform, done.stdout + done.stderr)
        sha256 = {}
        for path in sorted(Path(scratch).glob("*.whl")):
            if path.name.startswith("hwnas_agent-"):
                continue  # shipped on its own (it changes with every source edit)
            sha256[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
            shutil.move(str(path), folder / path.name)
    index.write_text(json.dumps(sha256, indent=1, sort_keys=True) + "\n")  # last: the set is whole
    return WheelSet(folder, sha256)


def download_error(device: str, platform: DevicePlatform, output: str) -> DeviceError:
    unreachable = re.search(INDEX_UNREACHABLE, output)
    if unreachable:
        return IndexUnreachable(
            f"{device}: the controller cannot reach the package index to download the agent's "
            f"wheels for {platform.describe()} ({unreachable.group(0)}); connect the controller "
            f"(or set PIP_INDEX_URL to a mirror) and run install again. Nothing was changed on "
            f"the device")
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        package = Requirement(missing.group(1)).name
        return WheelMissing(
            f"{device}: {package} publishes no wheel for {platform.describe()} (pip platform "
            f"{platform.pip_platforms()[0]}, {platform.cp}), so the agent cannot be installed "
            f"offline there; install a Python on the device for which {package} has wheels and "
            f"name it (agent_install.python), or let the device build or fetch it from its own "
            f"index with `agent_install: {{index: device}}` in the profile. Nothing was changed "
            f"on the device")
    errors = "\n".join(line for line in output.splitlines() if line.startswith("ERROR"))
    return DeviceError(f"{device}: pip download for {platform.describe()} failed: "
                       f"{(errors or output.strip())[-800:]}. Nothing was changed on the device")
