"""The agent's wheel set for a device platform: pip tags, and the real `pip download` for the
platforms of the boards hwnas is for (JetPack 5's Python 3.8, Raspberry Pi OS bookworm's 3.11).

The downloads skip, with the reason, only where the controller cannot reach the package index.
A second run is fast: pip's own HTTP cache keeps the files, and the wheel set is cached by
platform under HWNAS_CACHE_DIR (a second call in the same session does not run pip at all).
"""

from __future__ import annotations

import re
import time

import pytest
from packaging.utils import parse_wheel_filename

from hwnas.disk import cache_folder
from hwnas.remote.wheels import (DevicePlatform, IndexUnreachable, WheelMissing, check_extras,
                                 unfit_extra, wheel_set)

JETPACK5 = DevicePlatform("aarch64", (3, 8), "cpython", (2, 31), True)
BOOKWORM = DevicePlatform("aarch64", (3, 11), "cpython", (2, 36), False)


@pytest.fixture(scope="module")
def agent_whl():
    from hwnas.remote.install import agent_wheel

    return agent_wheel(cache_folder())


def download(platform, agent_whl, extras=(), log=print):
    try:
        return wheel_set("board", platform, agent_whl, list(extras), cache_folder(), log)
    except IndexUnreachable as exc:
        pytest.skip(f"the package index is unreachable from this machine: {exc}")


def test_platform_tags_cover_every_manylinux_up_to_the_devices_glibc():
    tags = JETPACK5.pip_platforms()
    assert tags[0] == "manylinux_2_31_aarch64" and tags[-1] == "manylinux2014_aarch64"
    assert "manylinux_2_28_aarch64" in tags and "manylinux_2_17_aarch64" in tags
    assert not any("2_32" in t or "x86_64" in t for t in tags)
    assert JETPACK5.key == "aarch64-cp38-glibc2.31"
    musl = DevicePlatform("aarch64", (3, 11), "cpython", None, False)
    assert musl.pip_platforms() == []


def test_the_probe_answer_is_parsed_and_a_bad_one_says_what_to_run():
    from hwnas.errors import DeviceError

    found = DevicePlatform.parse("pi", 'noise\n{"machine": "aarch64", "python": [3, 11], '
                                 '"implementation": "cpython", "libc": ["glibc", "2.36"], '
                                 '"jetson": false}\n')
    assert found == BOOKWORM
    with pytest.raises(DeviceError, match="platform.libc_ver"):
        DevicePlatform.parse("pi", "Traceback...")


@pytest.mark.parametrize("platform", [JETPACK5, BOOKWORM], ids=["jetpack5-cp38", "bookworm-cp311"])
def test_real_pip_download_finds_wheels_of_exactly_that_platform(platform, agent_whl):
    logged = []
    found = download(platform, agent_whl, log=logged.append)
    names = {parse_wheel_filename(p.name)[0]: p.name for p in found.paths}
    assert {"numpy", "onnxruntime", "pip"} <= set(names)
    assert not any(n.startswith("hwnas-agent") for n in names)  # shipped on its own
    accepted = set(platform.pip_platforms()) | {"any"}
    for path in found.paths:
        _, _, _, tags = parse_wheel_filename(path.name)
        assert any(t.platform in accepted and t.interpreter in (platform.cp, "py3", "py2")
                   or t.platform in accepted and t.abi == "abi3" for t in tags), path.name
        assert not any(t.platform.endswith("x86_64") for t in tags), path.name
    numpy_tags = parse_wheel_filename(names["numpy"])[3]
    assert {t.abi for t in numpy_tags} == {platform.cp}  # a compiled wheel for that Python
    # a second call: from the cache, no pip, no network
    started = time.monotonic()
    again = download(platform, agent_whl, log=logged.append)
    assert again == found and time.monotonic() - started < 1.0
    assert len([line for line in logged if "downloading" in line]) <= 1


def test_an_extra_its_python_cannot_have_is_refused_by_name(agent_whl):
    with pytest.raises(WheelMissing, match=r"extra 'genai' needs onnxruntime-genai.*CPython 3\.8"):
        check_extras("jetson", JETPACK5, agent_whl, ["genai"])
    check_extras("pi", BOOKWORM, agent_whl, ["genai", "qnn"])  # both exist for 3.11
    # what a QNN runtime only wishes for: install leaves it out, and says so (install.py)
    jammy = DevicePlatform("aarch64", (3, 10), "cpython", (2, 35), False)
    assert unfit_extra(jammy, agent_whl, "qnn").startswith("onnxruntime-qnn")
    assert unfit_extra(BOOKWORM, agent_whl, "qnn") is None


def test_the_genai_extra_is_in_the_wheel_set_where_asked(agent_whl):
    found = download(BOOKWORM, agent_whl, extras=["genai"])
    assert any(parse_wheel_filename(p.name)[0] == "onnxruntime-genai" for p in found.paths)


def test_a_platform_without_wheels_is_one_error_naming_package_and_platform(agent_whl):
    i686 = DevicePlatform("i686", (3, 11), "cpython", (2, 36), False)
    with pytest.raises(WheelMissing) as caught:
        download(i686, agent_whl)
    message = str(caught.value)
    assert re.match(r"board: (numpy|onnxruntime) publishes no wheel for i686, CPython 3.11, "
                    r"glibc 2.36", message), message
    assert "agent_install: {index: device}" in message and "Nothing was changed" in message
    with pytest.raises(WheelMissing, match="CPython on a glibc Linux"):
        download(DevicePlatform("aarch64", (3, 11), "cpython", None, False), agent_whl)


def test_genai_on_a_glibc_older_than_its_wheels_is_named(agent_whl):
    """Ubuntu 18.04's glibc 2.27 (JetPack 4): onnxruntime-genai's aarch64 wheels need newer."""
    old = DevicePlatform("aarch64", (3, 10), "cpython", (2, 27), True)
    with pytest.raises(WheelMissing) as caught:
        download(old, agent_whl, extras=["genai"])
    assert str(caught.value).startswith(
        "board: onnxruntime-genai publishes no wheel for aarch64, CPython 3.10, glibc 2.27")
