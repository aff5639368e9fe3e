"""The devices a search measures on: one trial per device at a time.

A device that keeps failing is taken out of the pool; its measurement is retried on
another device of the same pool (devices whose profiles name the same `pool` are
interchangeable). With every device lost, the search stops and can be resumed.
"""

from __future__ import annotations

import dataclasses
import threading

from hwnas.config.models import DeviceProfile
from hwnas.errors import DeviceError
from hwnas.remote.client import AgentClient


@dataclasses.dataclass(frozen=True, eq=False)
class Device:
    profile: DeviceProfile
    client: AgentClient

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def pool(self) -> str:
        return self.profile.pool or self.profile.name


class DevicePool:
    def __init__(self, devices: list[Device]) -> None:
        if not devices:
            raise DeviceError("a search needs at least one device")
        self._devices = list(devices)
        self._free = list(devices)
        self._down: set[str] = set()
        self._condition = threading.Condition()

    @property
    def devices(self) -> list[Device]:
        """Every device of the pool, down or not."""
        return list(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    @property
    def alive(self) -> list[Device]:
        return [d for d in self._devices if d.name not in self._down]

    def acquire(self, pool: str | None = None) -> Device:
        """A free live device (of ``pool`` if given); waits while all are busy."""
        with self._condition:
            while True:
                live = [d for d in self.alive if pool is None or d.pool == pool]
                if not live:
                    lost = ", ".join(sorted(self._down))
                    raise DeviceError(f"no device left{' in pool ' + pool if pool else ''} "
                                      f"(lost: {lost}); the study is saved: run the same "
                                      f"command again once the devices are back")
                free = [d for d in self._free if d in live]
                if free:
                    self._free.remove(free[0])
                    return free[0]
                self._condition.wait(timeout=1.0)

    def release(self, device: Device) -> None:
        with self._condition:
            if device.name not in self._down and device not in self._free:
                self._free.append(device)
            self._condition.notify_all()

    def mark_down(self, device: Device) -> None:
        with self._condition:
            self._down.add(device.name)
            if device in self._free:
                self._free.remove(device)
            self._condition.notify_all()
