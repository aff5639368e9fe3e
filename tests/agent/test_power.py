"""Every power reader on fixture trees and lines in the exact real formats, including the
known traps: mV vs mW, µJ counter wrap, missing VDD_IN, `Command not registered` on a Pi 4."""

from __future__ import annotations

import pytest

from hwnas_agent import power
from hwnas_agent.power import SensorUnavailable, open_source
from hwnas_agent.power.ina3221 import board_total
from hwnas_agent.power.rapl import counter_delta
from hwnas_agent.power.sampler import PowerSampler, summarize
from hwnas_agent.power.tegrastats import parse_line
from hwnas_agent.power.vcgencmd import parse_pmic
from hwnas_agent.protocol import POWER_SOURCES

from tests.agent import power_fixtures as fx


def test_protocol_names_every_source():
    assert set(POWER_SOURCES) == set(power.KINDS) | {"none"}


# -- one contract, every implementation ----------------------------------------------------

def _ina3221(tmp_path):
    return open_source("ina3221", {"sysfs_root": str(tmp_path)}), fx.orin_nano_hwmon(tmp_path)


def _ina3221_iio(tmp_path):
    return open_source("ina3221", {"sysfs_root": str(tmp_path)}), fx.jetpack4_iio(tmp_path)


def _hwmon(tmp_path):
    return open_source("hwmon", {"sysfs_root": str(tmp_path)}), fx.ina219_hwmon(tmp_path)


def _power_supply(tmp_path):
    return open_source("power_supply", {"sysfs_root": str(tmp_path)}), fx.qualcomm_battery(tmp_path)


def _tegrastats(tmp_path):
    tool = fx.program(tmp_path, "tegrastats", fx.TEGRASTATS_ORIN_JP5)
    return open_source("tegrastats", {"command": [str(tool)], "interval_ms": 50}), 17.946


def _pi5(tmp_path):
    tool = fx.program(tmp_path, "vcgencmd", fx.PI5_PMIC, repeat=False)
    return open_source("pi5_pmic", {"command": [str(tool)]}), parse_pmic(fx.PI5_PMIC)[0]


def _command(tmp_path):
    meter = fx.program(tmp_path, "usbmeter", "4.21 W\n")
    return open_source("command", {"command": str(meter), "rate_hz": 20}), 4.21


@pytest.fixture(params=[_ina3221, _ina3221_iio, _hwmon, _power_supply, _tegrastats, _pi5, _command],
                ids=["ina3221-hwmon", "ina3221-iio", "hwmon", "power_supply", "tegrastats",
                     "pi5_pmic", "command"])
def source_and_watts(request, tmp_path):
    # the fixture tree is written before the source opens it
    factory = request.param
    if factory in (_tegrastats, _pi5, _command):
        source, watts = factory(tmp_path)
    else:
        expected = {_ina3221: fx.orin_nano_hwmon, _ina3221_iio: fx.jetpack4_iio,
                    _hwmon: fx.ina219_hwmon, _power_supply: fx.qualcomm_battery}[factory](tmp_path)
        source, watts = factory(tmp_path)[0], expected
    yield source, watts
    source.close()


class TestPowerSourceContract:
    def test_reads_watts_in_the_right_unit(self, source_and_watts):
        source, watts = source_and_watts
        assert source.read().watts == pytest.approx(watts, rel=1e-6)

    def test_describes_what_it_covers(self, source_and_watts):
        source, _ = source_and_watts
        described = source.describe()
        assert described["kind"] in power.KINDS and described["covers"] and described["rate_hz"] > 0

    def test_sampler_collects_at_the_source_rate(self, source_and_watts):
        source, watts = source_and_watts
        sampler = PowerSampler(source, rate_hz=50).start()
        import time

        time.sleep(0.3)
        samples = sampler.stop()
        assert 5 <= len(samples) <= 20
        assert all(s.watts == pytest.approx(watts, rel=1e-6) for s in samples)


# -- reader specifics and traps -------------------------------------------------------------

def test_ina3221_hwmon_is_millivolts_times_milliamps_not_milliwatts(tmp_path):
    expected = fx.orin_nano_hwmon(tmp_path)
    sample = open_source("ina3221", {"sysfs_root": str(tmp_path)}).read()
    assert sample.watts == pytest.approx(expected) and abs(sample.watts - 6.017) < 1e-3
    assert set(sample.rails_w) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}  # no channel 7


def test_ina3221_without_vdd_in_sums_rails_and_skips_nc(tmp_path):
    expected = fx.agx_orin_hwmon(tmp_path)
    source = open_source("ina3221", {"sysfs_root": str(tmp_path)})
    sample = source.read()
    assert "NC" not in sample.rails_w and len(sample.rails_w) == 4
    assert sample.watts == pytest.approx(expected)
    assert "sum of INA3221 rails" in source.covers and "no board-input rail" in source.covers


def test_ina3221_iio_board_input_is_pom_5v_in(tmp_path):
    fx.jetpack4_iio(tmp_path)
    source = open_source("ina3221", {"sysfs_root": str(tmp_path)})
    assert source.read().watts == pytest.approx(2.85)
    assert source.covers == "board input (POM_5V_IN)" and source.describe()["driver"] == "iio"


@pytest.mark.parametrize("line, total, covers, rails", [
    (fx.TEGRASTATS_ORIN_JP5, 17.946, "board input (VDD_IN)", 3),
    (fx.TEGRASTATS_AGX_JP7, 5.139 + 3.268 + 5.5, "sum of INA3221 rails", 3),
    (fx.TEGRASTATS_TX2, 5.297, "board input (VDD_IN)", 6),
    (fx.TEGRASTATS_NANO, 0.933, "board input (POM_5V_IN)", 3),
    (fx.TEGRASTATS_XAVIER, (1155 + 385 + 2504 + 0 + 192 + 2692) / 1000, "sum of INA3221 rails", 6),
])
def test_tegrastats_lines_of_every_jetpack(line, total, covers, rails):
    parsed = parse_line(line)
    assert parsed["total_w"] == pytest.approx(total)
    assert parsed["covers"].startswith(covers)
    assert len(parsed["rails_w"]) == rails
    assert "RAM" not in parsed["rails_w"] and "SWAP" not in parsed["rails_w"]


def test_tegrastats_uses_the_current_value_not_the_running_average():
    assert parse_line(fx.TEGRASTATS_ORIN_JP5)["rails_w"]["VDD_SOC"] == pytest.approx(3.923)
    assert parse_line(fx.TEGRASTATS_XAVIER)["rails_w"]["SOC"] == pytest.approx(2.504)


def test_tegrastats_temperatures():
    temps = parse_line(fx.TEGRASTATS_AGX_JP7)["temperatures_c"]
    assert temps["cpu"] == pytest.approx(52.968) and temps["tj"] == pytest.approx(54.5)
    assert parse_line("RAM 2017/7854MB CPU [2%@345]") is None


def test_pi5_pmic_sums_v_times_i_over_rails_with_both():
    total, rails = parse_pmic(fx.PI5_PMIC)
    assert "EXT5V" not in rails and "BATT" not in rails  # voltage only
    assert rails["VDD_CORE"] == pytest.approx(0.56259 * 0.7679846)
    assert total == pytest.approx(sum(rails.values()))
    assert 1.0 < total < 2.0


def test_pi4_answers_command_not_registered(tmp_path):
    with pytest.raises(SensorUnavailable, match="Raspberry Pi 4 .* INA219/INA226"):
        parse_pmic(fx.PI4_PMIC)
    tool = fx.program(tmp_path, "vcgencmd", fx.PI4_PMIC, repeat=False)
    with pytest.raises(SensorUnavailable, match="no PMIC ADC"):
        open_source("pi5_pmic", {"command": [str(tool)]})


def test_pi5_source_is_labelled_as_under_reading():
    from hwnas_agent.power.vcgencmd import COVERS

    assert "under-reads the board input" in COVERS


def test_rapl_counter_wrap():
    assert counter_delta(100, 250, 1000) == 150
    assert counter_delta(900, 50, 1000) == 150  # wrapped


def test_rapl_reads_energy_through_a_wrap(tmp_path):
    max_range = 262_143_328_850
    fx.rapl(tmp_path, energy_uj=max_range - 1_000_000)
    source = open_source("rapl", {"sysfs_root": str(tmp_path)})
    first = source.read()
    fx.write(tmp_path, "class/powercap/intel-rapl:0/energy_uj", "4000000")  # wrapped, +5 J
    second = source.read()
    assert second.energy_j - first.energy_j == pytest.approx(5.0)
    assert "package-0" in source.covers and "core" not in source.covers  # sub-zone not added


def test_rapl_root_only_gives_advice(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file: the permission trap cannot be shown")
    fx.rapl(tmp_path)
    (tmp_path / "class/powercap/intel-rapl:0/energy_uj").chmod(0)
    with pytest.raises(SensorUnavailable, match="not readable"):
        open_source("rapl", {"sysfs_root": str(tmp_path)}).read()


def test_hwmon_energy_counter_is_microjoules(tmp_path):
    fx.write(tmp_path, "class/hwmon/hwmon1/name", "power_meter")
    fx.write(tmp_path, "class/hwmon/hwmon1/energy1_input", "12500000")
    sample = open_source("hwmon", {"sysfs_root": str(tmp_path)}).read()
    assert sample.energy_j == pytest.approx(12.5) and sample.watts is None


def test_power_supply_prefers_power_now_and_ignores_current_sign(tmp_path):
    fx.write(tmp_path, "class/power_supply/bms/voltage_now", "3900000")
    fx.write(tmp_path, "class/power_supply/bms/current_now", "1000000")
    assert open_source("power_supply", {"sysfs_root": str(tmp_path)}).read().watts == pytest.approx(3.9)
    fx.write(tmp_path, "class/power_supply/bms/power_now", "-4100000")
    assert open_source("power_supply", {"sysfs_root": str(tmp_path)}).read().watts == pytest.approx(4.1)


def test_nvml_without_pynvml_names_the_package():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        with pytest.raises(SensorUnavailable, match="nvidia-ml-py"):
            open_source("nvml")
    else:
        pytest.skip("pynvml is installed here")


def test_missing_sensors_are_unavailable_not_errors(tmp_path):
    for kind in ("ina3221", "hwmon", "rapl", "power_supply"):
        with pytest.raises(SensorUnavailable):
            open_source(kind, {"sysfs_root": str(tmp_path)})
    with pytest.raises(SensorUnavailable, match="not found"):
        open_source("tegrastats", {"command": [str(tmp_path / "nope")]})


def test_detect_finds_what_the_tree_has(tmp_path):
    fx.orin_nano_hwmon(tmp_path)
    fx.rapl(tmp_path)
    kinds = [found["kind"] for found in power.detect(str(tmp_path))]
    assert kinds[0] == "ina3221" and "rapl" in kinds and "hwmon" not in kinds


def test_board_total_never_adds_rails_to_vdd_in():
    assert board_total({"VDD_IN": 10.0, "VDD_SOC": 3.0})[0] == 10.0


# -- summary --------------------------------------------------------------------------------

def test_summary_refuses_energy_from_too_few_samples(tmp_path):
    fx.ina219_hwmon(tmp_path)
    source = open_source("hwmon", {"sysfs_root": str(tmp_path)})
    samples = [source.read(), source.read()]
    result = summarize(source, samples, samples, 1.0, 100, min_samples=20)
    assert "error" in result and "energy_mj_per_inference" not in result


def test_summary_energy_per_inference_and_above_idle():
    from hwnas_agent.power import PowerSample, PowerSource

    class Fixed(PowerSource):
        kind, covers = "command", "test"

    idle = [PowerSample(2.0, time_s=t) for t in range(5)]
    busy = [PowerSample(5.0 if i % 2 else 7.0, time_s=i) for i in range(30)]
    result = summarize(Fixed(), idle, busy, timed_seconds=3.0, inferences=1000, min_samples=20)
    assert result["mean_w"] == pytest.approx(6.0) and result["peak_w"] == 7.0
    assert result["idle_w"] == pytest.approx(2.0)
    assert result["energy_mj_per_inference"] == pytest.approx(6.0 * 3.0 / 1000 * 1000)
    assert result["energy_mj_per_inference_above_idle"] == pytest.approx(4.0 * 3.0)


def test_summary_uses_the_energy_counter_when_present():
    from hwnas_agent.power import PowerSample, PowerSource

    class Counter(PowerSource):
        kind, covers = "rapl", "test"

    # 10 J over 2 s = 5 W whatever the instantaneous samples say
    samples = [PowerSample(None, energy_j=100.0 + 0.5 * i, time_s=0.1 * i) for i in range(21)]
    result = summarize(Counter(), samples[:3], samples, 2.0, 200, min_samples=20)
    assert result["mean_w"] == pytest.approx(5.0)
