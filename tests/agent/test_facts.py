"""Device facts and provenance parsers, on the real outputs of the tools and sysfs trees."""

from pathlib import Path

from hwnas_agent.facts import (
    cpu_frequencies,
    device_facts,
    parse_jetson_clocks,
    parse_nvpmodel,
    temperatures_c,
)
from hwnas_agent.thermal import throttling

from tests.agent import power_fixtures as fx

NVPMODEL_Q = "NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n"
JETSON_CLOCKS_SHOW = """\
SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-1
cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
FAN Dynamic Speed control=active hwmon4_pwm1=255
NV Power Mode: MAXN
"""


def test_nvpmodel_query():
    assert parse_nvpmodel(NVPMODEL_Q) == {"mode": "MAXN", "id": 0}
    assert parse_nvpmodel("") is None


def test_jetson_clocks_show_locked_and_unlocked():
    state = parse_jetson_clocks(JETSON_CLOCKS_SHOW)
    assert state["power_mode"] == "MAXN" and state["clocks_locked"] is True
    assert state["units"]["cpu1"]["Governor"] == "schedutil"
    assert state["units"]["GPU"]["CurrentFreq"] == "1300500000"
    unlocked = JETSON_CLOCKS_SHOW.replace("GPU MinFreq=1300500000", "GPU MinFreq=306000000")
    assert parse_jetson_clocks(unlocked)["clocks_locked"] is False


def test_cpu_clocks_and_temperatures_from_sysfs(tmp_path):
    for cpu, khz in ((0, 1500000), (1, 1800000), (10, 600000)):
        base = f"devices/system/cpu/cpu{cpu}/cpufreq/"
        fx.write(tmp_path, base + "scaling_governor", "performance")
        fx.write(tmp_path, base + "scaling_cur_freq", str(khz))
        fx.write(tmp_path, base + "scaling_max_freq", "1800000")
    fx.write(tmp_path, "class/thermal/thermal_zone0/type", "cpu-thermal")
    fx.write(tmp_path, "class/thermal/thermal_zone0/temp", "48300")  # m°C
    clocks = cpu_frequencies(str(tmp_path))
    assert [c["cpu"] for c in clocks] == ["cpu0", "cpu1", "cpu10"]  # numeric order
    assert clocks[0]["cur_mhz"] == 1500.0 and clocks[0]["governor"] == "performance"
    assert temperatures_c(str(tmp_path)) == {"cpu-thermal": 48.3}


def test_throttling_flags_clock_drop_and_temperature_rise():
    start = {"max_temperature_c": 50.0, "mean_cpu_mhz": 2000.0}
    steady = [{"max_temperature_c": 52.0, "mean_cpu_mhz": 2000.0}] * 3
    assert throttling(steady, start, 10.0, 0.1)["suspected"] is False
    slowed = steady + [{"max_temperature_c": 53.0, "mean_cpu_mhz": 1400.0}]
    assert throttling(slowed, start, 10.0, 0.1)["suspected"] is True
    hot = steady + [{"max_temperature_c": 71.0, "mean_cpu_mhz": 2000.0}]
    result = throttling(hot, start, 10.0, 0.1)
    assert result["suspected"] is True and result["temperature_rise_c"] == 21.0
    blind = throttling([{"max_temperature_c": None, "mean_cpu_mhz": None}], {}, 10.0, 0.1)
    assert blind["observable"] is False and blind["suspected"] is False


def test_device_facts_lists_power_sources(tmp_path):
    fx.ina219_hwmon(tmp_path)
    facts = device_facts(sysfs_root=str(tmp_path))
    assert [s["kind"] for s in facts["power_sources"]] == ["hwmon"]
    assert facts["power_sources"][0]["watts_now"] == 3.65
    assert facts["runtimes"]["onnxruntime"]["execution_providers"]


def test_runtimes_list_every_runtime_that_imports_with_version_and_origin(tmp_path, monkeypatch):
    import sys

    import onnxruntime

    from hwnas_agent import facts

    found = facts.runtimes()
    assert found["onnxruntime"]["version"] == onnxruntime.__version__
    assert found["onnxruntime"]["location"] == str(Path(onnxruntime.__file__).parent)
    assert "CPUExecutionProvider" in found["onnxruntime"]["execution_providers"]
    for name, module in facts.OTHER_RUNTIMES.items():  # listed exactly where they import
        try:
            __import__(module)
            assert name in found
        except ImportError:
            assert name not in found
    # present but broken (JetPack bindings without their native library): named, not fatal
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.py").write_text(
        "raise OSError('libnvinfer.so.8: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    assert "libnvinfer.so.8" in facts.runtimes()["tensorrt"]["error"]
