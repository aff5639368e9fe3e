"""NVIDIA GPU power through NVML (lazy import of pynvml from the nvidia-ml-py package).

nvmlDeviceGetPowerUsage is in mW (on Ampere and newer a 1 s average, not instantaneous);
nvmlDeviceGetTotalEnergyConsumption is mJ since driver load (Volta+): where it answers it
is the figure's counter. Both are asked once at open time: on Jetson (JetPack 6/7) NVML
initialises and names the GPU ("Orin (nvgpu)") but answers NotSupported to every power and
energy query (HazyResearch/intelligence-per-watt issue #40), so that is reported as
unavailable then, with what to use instead, never as an NVML error in the middle of a job.
The figure is the GPU board's power, not the host's.
"""

from __future__ import annotations

import time
from typing import Any

from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable

USES_SYSFS = False
JETSON_ADVICE = ("this looks like a Jetson (integrated GPU), where NVML has no power telemetry: "
                 "use the 'ina3221' or 'tegrastats' source")


class NvmlSource(PowerSource):
    kind = "nvml"
    rate_hz = 10.0

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            raise SensorUnavailable("NVML power needs pynvml: pip install nvidia-ml-py")
        self._nvml: Any = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise SensorUnavailable("NVML not usable here: %s" % exc)
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            name = name if isinstance(name, str) else name.decode()
            try:
                pynvml.nvmlDeviceGetPowerUsage(self._handle)
            except pynvml.NVMLError as exc:
                tegra = "nvgpu" in name or "Orin" in name or "Thor" in name
                raise SensorUnavailable("NVML answers %r to the power query of GPU %d (%s)%s"
                                        % (str(exc), index, name, ": " + JETSON_ADVICE if tegra
                                           else ": this GPU or driver has no power readout"))
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self.has_energy_counter = True
            except pynvml.NVMLError:
                self.has_energy_counter = False
        except pynvml.NVMLError as exc:
            self.close()
            raise SensorUnavailable("NVML not usable for GPU %d: %s" % (index, exc))
        except SensorUnavailable:
            self.close()
            raise
        self.figure = "GPU %d" % index
        self.covers = "GPU %d board power (%s, NVML); excludes the host" % (index, name)

    def read(self) -> PowerSample:
        started = time.monotonic()
        try:
            watts = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            energy = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0
                      if self.has_energy_counter else None)
        except self._nvml.NVMLError as exc:
            raise SensorUnavailable("NVML %s: %s" % (self.figure, exc))
        return PowerSample(watts, energy_j=energy, time_s=(started + time.monotonic()) / 2.0)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def open_source(index: int = 0) -> NvmlSource:
    return NvmlSource(index)
