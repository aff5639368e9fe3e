"""How `hwnas agent install` installs the agent on an SSH device (the profile's
``agent_install:`` section).

By default the device needs no internet: the controller downloads the agent's dependency
wheels for the device's exact platform and ships them (``index: controller``). A device that
may reach a package index itself can say ``index: device``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from hwnas.config.fields import Frozen

# the hwnas-agent extras (agents/pyproject.toml) a profile may ask for
AGENT_EXTRAS = ("qnn", "genai")


class AgentInstallSpec(Frozen):
    # controller: wheels downloaded on the controller for the device's platform, shipped over
    # SFTP, installed with --no-index; device: pip on the device uses the device's own index
    index: Literal["controller", "device"] = "controller"
    # the venv sees the system's site packages (JetPack's tensorrt); None: only on a Jetson
    # (/etc/nv_tegra_release exists). The agent's own packages in the venv still win.
    system_site_packages: bool | None = None
    # hwnas-agent extras to install besides those the runtime asks for (QNN adds qnn itself)
    extras: list[Literal["qnn", "genai"]] = []
    # the device's interpreter for the agent's venv (default: the first python3.x >= 3.8)
    python: str | None = None

    @field_validator("python")
    @classmethod
    def _a_path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.startswith("-") or
                                  any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise ValueError("name the interpreter's path or command (e.g. /usr/bin/python3.8); "
                             "no control characters, not starting with '-'")
        return value
