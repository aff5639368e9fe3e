"""Small readers shared by the sysfs sources."""

from __future__ import annotations

from typing import Optional

from hwnas_agent.power import SensorUnavailable


def read_text(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise SensorUnavailable("%s is not readable by this user; run the agent as a user that "
                                "may read it (often root), or grant read access" % path)
    except OSError:
        return None


def read_number(path: str) -> Optional[float]:
    text = read_text(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None
