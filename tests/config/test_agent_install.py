"""The device profile's `agent_install:` section: how `hwnas agent install` installs."""

from __future__ import annotations

import pytest

from hwnas.config import load_device_profile
from hwnas.errors import ConfigError
from hwnas.remote.install import runtime_extras

SSH = "name: pi\nconnection: {kind: ssh, host: pi.local}\n"


def load(tmp_path, text: str):
    path = tmp_path / "pi.yaml"
    path.write_text(SSH + text)
    return load_device_profile(path)


def test_offline_from_the_controller_is_the_default(tmp_path):
    options = load(tmp_path, "").agent_install
    assert options.index == "controller" and options.system_site_packages is None
    assert options.extras == [] and options.python is None
    chosen = load(tmp_path, "agent_install: {index: device, system_site_packages: true, "
                            "extras: [genai], python: /usr/bin/python3.8}\n").agent_install
    assert (chosen.index, chosen.system_site_packages, chosen.extras, chosen.python) == \
        ("device", True, ["genai"], "/usr/bin/python3.8")


@pytest.mark.parametrize("text, key", [
    ("agent_install: {index: pypi}\n", "agent_install.index"),
    ("agent_install: {extras: [tensorrt]}\n", "agent_install.extras"),
    ("agent_install: {python: '-c import os'}\n", "agent_install.python"),
    ("agent_install: {python: \"py\\nthon\"}\n", "agent_install.python"),
    ("agent_install: {indx: device}\n", "agent_install"),
])
def test_a_wrong_value_names_its_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, text)


def test_a_qnn_runtime_brings_the_qnn_extra(tmp_path):
    assert runtime_extras(load(tmp_path, "")) == []
    qnn = load(tmp_path, "runtime: {execution_providers: [QNNExecutionProvider, "
                         "CPUExecutionProvider]}\n")
    assert runtime_extras(qnn) == ["qnn"]
