"""NVIDIA GPU power through NVML (lazy import of pynvml from the nvidia-ml-py package).

nvmlDeviceGetPowerUsage is in mW (on Ampere and newer a 1 s average, not instantaneous);
nvmlDeviceGetTotalEnergyConsumption is mJ since driver load (Volta+): energy comes from
its delta. Jetson has no NVML.
"""

from __future__ import annotations

from typing import Any

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable

USES_SYSFS = False


class NvmlSource(PowerSource):
    kind = "nvml"
    rate_hz = 10.0

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            raise SensorUnavailable("NVML power needs pynvml: pip install nvidia-ml-py")
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
        except pynvml.NVMLError as exc:
            raise SensorUnavailable("NVML not usable here: %s" % exc)
        self._nvml: Any = pynvml
        self.covers = "GPU %d board power (%s, NVML)" % (index, name if isinstance(name, str)
                                                          else name.decode())
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self._has_energy = True
        except pynvml.NVMLError:
            self._has_energy = False

    def read(self) -> PowerSample:
        watts = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
        energy = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
                  if self._has_energy else None)
        return PowerSample(watts, energy_j=energy)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def open_source(index: int = 0) -> NvmlSource:
    return NvmlSource(index)
