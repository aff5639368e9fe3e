"""Every power reader on fixture trees and lines in the exact real formats (see
tests/agent/power_fixtures.py for where each comes from), including the known traps: mV vs
mW, µJ counter wrap, missing VDD_IN, `Command not registered` on a Pi 4, Thor's VIN, negative
rails, RAPL psys, USB-PD contracts, meter lines with and without units, NVML on Jetson, and
tegrastats without root. Then the sampler's window and integration, and the summary."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

# only names that existed before issue 9 are imported here, so that the reader tests can be
# run against the old readers (they must fail there); the new API is imported where used
from hwnas_agent import power
from hwnas_agent.power import PowerSample, PowerSource, SensorUnavailable, open_source
from hwnas_agent.power.ina3221 import board_total
from hwnas_agent.power.rapl import counter_delta
from hwnas_agent.power.sampler import PowerSampler
from hwnas_agent.power.tegrastats import parse_line
from hwnas_agent.power.vcgencmd import parse_pmic
from hwnas_agent.protocol import POWER_SOURCES

from tests.agent import power_fixtures as fx


def test_protocol_names_every_source():
    assert set(POWER_SOURCES) == set(power.KINDS) | {"none"}


# -- one contract, every implementation ----------------------------------------------------

def _tegrastats(tmp_path):
    tool = fx.program(tmp_path, "tegrastats", fx.TEGRASTATS_ORIN_JP5)
    return open_source("tegrastats", {"command": [str(tool)], "interval_ms": 50}), 17.946


def _pi5(tmp_path):
    tool = fx.program(tmp_path, "vcgencmd", fx.PI5_PMIC, repeat=False)
    return open_source("pi5_pmic", {"command": [str(tool)]}), parse_pmic(fx.PI5_PMIC)[0]


def _command(tmp_path):
    meter = fx.program(tmp_path, "usbmeter", "4.21 W\n")
    return open_source("command", {"command": str(meter), "rate_hz": 50}), 4.21


SYSFS = {"ina3221-hwmon": ("ina3221", fx.orin_nano_hwmon), "ina3221-iio": ("ina3221", fx.jetpack4_iio),
         "ina3221-thor": ("ina3221", fx.thor_sysfs), "hwmon": ("hwmon", fx.ina219_hwmon),
         "hwmon-amdgpu": ("hwmon", fx.amdgpu_van_gogh_hwmon),
         "hwmon-zenpower": ("hwmon", fx.zenpower_hwmon),
         "power_supply": ("power_supply", fx.qualcomm_battery)}
PROGRAMS = {"tegrastats": _tegrastats, "pi5_pmic": _pi5, "command": _command}


@pytest.fixture(params=sorted(SYSFS) + sorted(PROGRAMS))
def source_and_watts(request, tmp_path):
    if request.param in SYSFS:
        kind, tree = SYSFS[request.param]
        watts = tree(tmp_path)  # the fixture tree is written before the source opens it
        source = open_source(kind, {"sysfs_root": str(tmp_path)})
    else:
        source, watts = PROGRAMS[request.param](tmp_path)
    yield source, watts
    source.close()


class TestPowerSourceContract:
    def test_reads_watts_in_the_right_unit(self, source_and_watts):
        source, watts = source_and_watts
        assert source.read().watts == pytest.approx(watts, rel=1e-6)

    def test_says_what_its_figure_is(self, source_and_watts):
        from hwnas_agent.power import SCOPES

        source, _ = source_and_watts
        described = source.describe()
        assert described["kind"] in power.KINDS and described["covers"] and described["rate_hz"] > 0
        assert described["scope"] in SCOPES and described["figure"]
        assert isinstance(described["energy_counter"], bool)

    def test_sampler_collects_at_the_source_rate(self, source_and_watts):
        source, watts = source_and_watts
        sampler = PowerSampler(source, rate_hz=50).start()
        time.sleep(0.3)
        window = sampler.stop()
        assert not window.errors and 5 <= len(window.samples) <= 21
        assert all(s.watts == pytest.approx(watts, rel=1e-6) for s in window.samples)
        times = [s.time_s for s in window.samples]
        assert times == sorted(set(times))  # monotonic, each reading once


# -- Jetson ---------------------------------------------------------------------------------

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
    assert source.scope == "partial"


def test_ina3221_iio_board_input_is_pom_5v_in(tmp_path):
    fx.jetpack4_iio(tmp_path)
    source = open_source("ina3221", {"sysfs_root": str(tmp_path)})
    assert source.read().watts == pytest.approx(2.85)
    assert source.covers == "board input (POM_5V_IN)" and source.describe()["driver"] == "iio"


def test_thor_sysfs_vin_from_the_ina238_is_the_board_input(tmp_path):
    expected = fx.thor_sysfs(tmp_path)
    source = open_source("ina3221", {"sysfs_root": str(tmp_path)})
    sample = source.read()
    assert sample.watts == pytest.approx(expected)  # VIN alone, never VIN + module rails
    assert sample.rails_w["VDD_GPU"] == pytest.approx(5.008 * -0.078)
    assert source.covers.startswith("board input (VIN") and "no board-input rail" not in source.covers


def test_thor_tegrastats_vin_is_the_board_input_not_one_more_rail():
    for line, vin in ((fx.TEGRASTATS_THOR_IDLE, 15.004), (fx.TEGRASTATS_THOR_LOADED, 124.486)):
        parsed = parse_line(line)
        assert parsed["total_w"] == pytest.approx(vin)
        assert parsed["covers"] == "board input (VIN)"
        assert {"VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0", "VIN"} <= set(parsed["rails_w"])


def test_tegrastats_negative_rails_are_read_not_lost():
    rails = parse_line(fx.TEGRASTATS_THOR_IDLE)["rails_w"]
    assert rails["VDD_GPU"] == pytest.approx(-0.392)
    assert rails["VDD_CPU_SOC_MSS"] == pytest.approx(3.924)  # current value, not the average


def test_tegrastats_without_root_says_to_run_as_root(tmp_path):
    tool = fx.program(tmp_path, "tegrastats", fx.TEGRASTATS_ORIN_NO_ROOT)
    started = time.monotonic()
    with pytest.raises(SensorUnavailable, match=r"no power rails .*(uid|groups).*as root"):
        open_source("tegrastats", {"command": [str(tool)], "interval_ms": 50})
    assert time.monotonic() - started < 5  # said at once, not after a timeout


@pytest.mark.parametrize("line, total, covers, rails", [
    (fx.TEGRASTATS_ORIN_JP5, 17.946, "board input (VDD_IN)", 3),
    (fx.TEGRASTATS_AGX_JP7, 5.139 + 3.268 + 5.5, "sum of INA3221 rails", 3),
    (fx.TEGRASTATS_TX2, 5.297, "board input (VDD_IN)", 6),
    (fx.TEGRASTATS_NANO, 0.933, "board input (POM_5V_IN)", 3),
    (fx.TEGRASTATS_XAVIER, (1155 + 385 + 2504 + 0 + 192 + 2692) / 1000, "sum of INA3221 rails", 6),
    (fx.TEGRASTATS_THOR_LOADED, 124.486, "board input (VIN)", 4),
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
    assert parse_line(fx.TEGRASTATS_THOR_LOADED)["rails_w"]["VDD_GPU"] == pytest.approx(37.939)


def test_tegrastats_temperatures():
    temps = parse_line(fx.TEGRASTATS_AGX_JP7)["temperatures_c"]
    assert temps["cpu"] == pytest.approx(52.968) and temps["tj"] == pytest.approx(54.5)
    assert parse_line("RAM 2017/7854MB CPU [2%@345]") is None


def test_board_total_never_adds_rails_to_the_board_input():
    assert board_total({"VDD_IN": 10.0, "VDD_SOC": 3.0})[0] == 10.0
    assert board_total({"VIN": 15.0, "VIN_SYS_5V0": 5.0, "VDD_GPU": -0.4})[0] == 15.0


# -- Raspberry Pi ---------------------------------------------------------------------------

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


# -- RAPL -----------------------------------------------------------------------------------

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
    assert "package-0" in source.covers and "core" not in source.figure  # sub-zone not added


def test_rapl_psys_already_contains_the_package_and_is_the_figure(tmp_path):
    fx.rapl_laptop(tmp_path, package_uj=50_000_000, psys_uj=80_000_000)
    source = open_source("rapl", {"sysfs_root": str(tmp_path)})
    first = source.read()
    fx.rapl_laptop(tmp_path, package_uj=56_000_000, psys_uj=89_000_000)  # +6 J package, +9 J psys
    second = source.read()
    assert second.energy_j - first.energy_j == pytest.approx(9.0)  # psys alone, never 15
    assert "psys" in source.covers and "already contains the package" in source.covers
    assert source.figure == "psys" and source.scope == "partial"
    assert {"psys", "package-0", "package-0:core", "package-0:dram"} <= set(second.rails_w)


def test_rapl_without_psys_is_packages_plus_their_dram(tmp_path):
    before = {"package-0": 10_000_000, "package-1": 20_000_000, "package-0:dram": 1_000_000,
              "package-1:dram": 2_000_000}
    fx.rapl_server(tmp_path, before)
    source = open_source("rapl", {"sysfs_root": str(tmp_path)})
    first = source.read()
    fx.rapl_server(tmp_path, {name: value + 1_000_000 for name, value in before.items()})
    second = source.read()
    assert second.energy_j - first.energy_j == pytest.approx(4.0)  # 2 packages + 2 DRAM, 1 J each
    assert source.figure == "package-0+package-1+package-0:dram+package-1:dram"
    assert "and their DRAM" in source.covers


def test_rapl_root_only_gives_advice(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file: the permission trap cannot be shown")
    fx.rapl(tmp_path)
    (tmp_path / "class/powercap/intel-rapl:0/energy_uj").chmod(0)
    with pytest.raises(SensorUnavailable, match="not readable"):
        open_source("rapl", {"sysfs_root": str(tmp_path)}).read()


# -- hwmon, power_supply --------------------------------------------------------------------

def test_hwmon_energy_counter_is_microjoules(tmp_path):
    fx.write(tmp_path, "class/hwmon/hwmon1/name", "power_meter")
    fx.write(tmp_path, "class/hwmon/hwmon1/energy1_input", "12500000")
    source = open_source("hwmon", {"sysfs_root": str(tmp_path)})
    sample = source.read()
    assert sample.energy_j == pytest.approx(12.5) and sample.watts is None
    assert source.has_energy_counter


def test_amdgpu_slow_and_fast_ppt_are_one_power_read_once(tmp_path):
    """Van Gogh's amdgpu shows its one APU power as slowPPT and as fastPPT (9.04 W each):
    the figure is 9.04 W from one named channel, never 18.08 W."""
    expected = fx.amdgpu_van_gogh_hwmon(tmp_path)
    source = open_source("hwmon", {"sysfs_root": str(tmp_path)})
    assert source.read().watts == pytest.approx(expected)
    described = source.describe()
    assert described["figure"] == "amdgpu power1_average (slowPPT)"
    assert "fastPPT" in described["covers"] and "not added" in described["covers"]
    assert [(c["file"], c["label"], c["used"]) for c in described["channels"]] == [
        ("power1_average", "slowPPT", True), ("power2_average", "fastPPT", False)]


def test_hwmon_limiter_views_are_never_summed_whatever_their_numbering(tmp_path):
    """Newer amdgpu labels its limits PPT and PPT1; a kernel without power2_average shows one
    channel: the figure is that power once, in each case."""
    base = "class/hwmon/hwmon1/"
    fx.write(tmp_path, base + "name", "amdgpu")
    for index, label in ((1, "PPT"), (2, "PPT1")):
        fx.write(tmp_path, base + "power%d_average" % index, "35000000")
        fx.write(tmp_path, base + "power%d_label" % index, label)
    assert open_source("hwmon", {"sysfs_root": str(tmp_path)}).read().watts == pytest.approx(35.0)
    (tmp_path / base / "power2_average").unlink()
    source = open_source("hwmon", {"sysfs_root": str(tmp_path)})
    assert source.read().watts == pytest.approx(35.0)
    assert source.figure == "amdgpu power1_average (PPT)"


def test_hwmon_distinct_rails_are_still_summed_and_named(tmp_path):
    expected = fx.zenpower_hwmon(tmp_path)
    source = open_source("hwmon", {"sysfs_root": str(tmp_path)})
    assert source.read().watts == pytest.approx(expected) and expected > 42
    assert source.figure == "zenpower power1_input (SVI2_P_Core)+power2_input (SVI2_P_SoC)"
    assert all(c["used"] for c in source.describe()["channels"])


def test_power_supply_prefers_power_now_and_ignores_current_sign(tmp_path):
    fx.write(tmp_path, "class/power_supply/bms/voltage_now", "3900000")
    fx.write(tmp_path, "class/power_supply/bms/current_now", "1000000")
    assert open_source("power_supply", {"sysfs_root": str(tmp_path)}).read().watts == pytest.approx(3.9)
    fx.write(tmp_path, "class/power_supply/bms/power_now", "-4100000")
    assert open_source("power_supply", {"sysfs_root": str(tmp_path)}).read().watts == pytest.approx(4.1)


def test_usb_pd_contract_is_not_a_measurement(tmp_path):
    fx.ucsi_usb_pd(tmp_path)
    with pytest.raises(SensorUnavailable, match=r"ucsi-source-psy-USBC000:001: .*USB-PD contract"):
        open_source("power_supply", {"sysfs_root": str(tmp_path)})


def test_current_now_equal_to_current_max_is_a_contract(tmp_path):
    base = "class/power_supply/usb/"
    for name, value in (("type", "USB"), ("online", "1"), ("voltage_now", "9000000"),
                        ("current_now", "2000000"), ("current_max", "2000000")):
        fx.write(tmp_path, base + name, value)
    with pytest.raises(SensorUnavailable, match="current_now equals current_max"):
        open_source("power_supply", {"sysfs_root": str(tmp_path)})


def test_a_battery_that_is_not_discharging_is_not_the_device(tmp_path):
    fx.laptop_battery(tmp_path, "Charging")
    fx.ucsi_usb_pd(tmp_path)
    with pytest.raises(SensorUnavailable) as caught:
        open_source("power_supply", {"sysfs_root": str(tmp_path)})
    assert "BAT0: a battery with status 'Charging'" in str(caught.value)
    assert "USB-PD contract" in str(caught.value)


def test_a_discharging_battery_is_the_whole_device_until_the_charger_comes(tmp_path):
    watts = fx.laptop_battery(tmp_path, "Discharging")
    source = open_source("power_supply", {"sysfs_root": str(tmp_path)})
    assert source.read().watts == pytest.approx(watts)
    fx.write(tmp_path, "class/power_supply/BAT0/status", "Charging")
    with pytest.raises(SensorUnavailable, match="no longer a measurement.*'Charging'"):
        source.read()
    assert source.scope == "board_input"


# -- external meters (command) --------------------------------------------------------------

def meter_source(folder, body, header="", **options):
    """The 'command' source on a program printing ``header`` once, then ``body`` again and
    again, as the meter prints it."""
    program = fx.program(folder, "meter", body, header=header, every_s=0.02)
    return open_source("command", dict({"command": [str(program)], "rate_hz": 50}, **options))


CSV_HEADER, CSV_ROW = fx.PYUMMETER_CSV.splitlines(keepends=True)


@pytest.mark.parametrize("header, body, watts", [
    ("", "2.31 W", 2.31),
    ("", "2310 mW", 2.31),
    ("", "2310mW", 2.31),
    ("", "5.08 V 0.45 A 2.31 W", 2.31),  # volts and amps before the watts: the watts are the reading
    ("", fx.RDSERIALTOOL_UM25C, 0.580),  # a dump: only its "USB:" line is a reading
    ("", fx.INA219_ARDUINO, 0.970),
    (CSV_HEADER, CSV_ROW, 1.672),  # CSV with a header and a date column
    ("time,voltage_V,current_A\n", "2026-11-21T10:00:01Z,5.0,0.5", 2.5),
    ("", '{"watts": 2.31}', 2.31),
    ("", '{"power_w": 2.31, "t": 1732183201.25}', 2.31),
    ("", '{"power_mw": 2310}', 2.31),
    ("", '{"voltage_v": 5.0, "current_a": 0.5}', 2.5),
], ids=["W", "mW", "mW-glued", "V-A-W", "rdserialtool", "ina219-sketch", "pyummeter-csv",
        "csv-V-A", "json-watts", "json-power_w", "json-power_mw", "json-V-A"])
def test_meter_lines_as_real_meters_print_them(tmp_path, header, body, watts):
    source = meter_source(tmp_path, body, header)
    try:
        assert source.read().watts == pytest.approx(watts)
    finally:
        source.close()


@pytest.mark.parametrize("line, reason", [
    (fx.WATTSUP_LOG, "4 numbers without units"),
    ("5.08 0.45", "2 numbers without units"),
    ("2.31", "a number without a unit"),
    ("2.31 W 2.20 W", "2 power values"),
    ("5.08 V 0.45 A", "volts and amps but no watts"),
    (fx.UM34C_JSON, "'power' has no unit"),
    ("Power: 2.31", "'Power' has no unit"),
    ('{"voltage": 5.08}', "no power in the JSON object"),
], ids=["wattsup", "two-bare", "one-bare", "two-watts", "V-A-only", "um34c-json", "power-label",
        "json-no-power"])
def test_meter_lines_that_cannot_be_read_unambiguously_are_refused(tmp_path, line, reason):
    with pytest.raises(SensorUnavailable, match=r"refused the line .*" + reason):
        meter_source(tmp_path, line).close()


def test_a_configured_unit_reads_bare_numbers_and_unitless_power_keys(tmp_path):
    from hwnas_agent.power.command import MeterLineParser

    assert MeterLineParser("W")("2.31").watts == pytest.approx(2.31)
    assert MeterLineParser("mW")("2310").watts == pytest.approx(2.31)
    source = meter_source(tmp_path, fx.UM34C_JSON, unit="W")
    try:
        assert source.read().watts == pytest.approx(2.311)
    finally:
        source.close()
    with pytest.raises(SensorUnavailable, match="2 numbers without units"):
        MeterLineParser("W")("5.08 0.45")  # a unit never makes two numbers one reading
    with pytest.raises(SensorUnavailable, match="unit='V' is not allowed"):
        MeterLineParser("V")


def test_the_scope_comes_from_the_configuration(tmp_path):
    source = meter_source(tmp_path, "2.31 W", scope="board_input", covers="USB meter at the plug")
    try:
        assert source.scope == "board_input" and source.covers.startswith("USB meter at the plug")
    finally:
        source.close()
    with pytest.raises(SensorUnavailable, match="scope 'everything' is not allowed"):
        meter_source(tmp_path, "2.31 W", scope="everything")


def test_a_meter_that_declares_itself_a_model_is_labelled_model(tmp_path):
    meter = fx.program(tmp_path, "model-meter", "12.00 V 0.19 A 2.310 W",
                       header="# scope: model -- computed from CPU time\n")
    source = open_source("command", {"command": [str(meter)], "scope": "board_input"})
    try:
        assert source.scope == "model" and "declares itself a model" in source.covers
    finally:
        source.close()


def test_cpu_meter_script_speaks_the_contract_and_says_it_is_a_model(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "cpu_meter.py")
    command = [sys.executable, script, "--idle-w", "4", "--busy-w", "15", "--interval", "0.05"]
    source = open_source("command", {"command": command, "rate_hz": 20})
    try:
        watts = source.read().watts
        assert 4.0 <= watts <= 15.0
        assert source.scope == "model" and "linear model" in source.covers
    finally:
        source.close()


def test_a_meter_that_dies_is_lost_not_repeated(tmp_path):
    meter = fx.program(tmp_path, "dying-meter", "2.31 W\n2.40 W", repeat=False)
    source = open_source("command", {"command": [str(meter)], "rate_hz": 50})
    try:
        time.sleep(0.3)
        with pytest.raises(SensorUnavailable, match="exited with code 0"):
            source.read()
    finally:
        source.close()


def test_a_meter_that_goes_silent_is_lost(tmp_path):
    meter = tmp_path / "stalling-meter"
    meter.write_text("#!/bin/sh\necho '2.31 W'\nsleep 30\n")
    meter.chmod(0o755)
    source = open_source("command", {"command": [str(meter)], "rate_hz": 10})
    try:
        assert source.read().watts == pytest.approx(2.31)
        time.sleep(2.2)
        with pytest.raises(SensorUnavailable, match="printed no reading for"):
            source.read()
    finally:
        source.close()


# -- NVML -----------------------------------------------------------------------------------

def test_nvml_without_pynvml_names_the_package():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        with pytest.raises(SensorUnavailable, match="nvidia-ml-py"):
            open_source("nvml")
    else:
        pytest.skip("pynvml is installed here")


def test_nvml_without_a_driver_is_unavailable_not_an_error():
    pytest.importorskip("pynvml")
    if shutil.which("nvidia-smi"):
        pytest.skip("an NVIDIA driver is installed here")
    with pytest.raises(SensorUnavailable, match="NVML not usable here: NVML Shared Library Not Found"):
        open_source("nvml")


# What libnvidia-ml answers on a Jetson (JetPack 6/7): init, count and name succeed, every
# power and energy query is NVML_ERROR_NOT_SUPPORTED (3) (HazyResearch/intelligence-per-watt
# issue #40: "Orin (nvgpu)", nvmlDeviceGetPowerUsage -> NVMLError_NotSupported). Built from
# this source so that the real pynvml meets those answers through its real ctypes path; with
# -DPOWER_MW it answers like a discrete GPU instead, until it is lost (NVML_ERROR_GPU_IS_LOST,
# 15) after LOST_AFTER power queries. It stands in for the C library only where no NVIDIA
# driver exists; the agent's code and pynvml are the real ones.
NVML_ANSWERS = r"""
#include <string.h>
typedef struct { int unused; } *handle_t;
static struct { int unused; } gpu;
static int calls = 0;
int nvmlInitWithFlags(unsigned int flags) { return 0; }
int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 1; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, handle_t *h) { *h = (handle_t)&gpu; return 0; }
int nvmlDeviceGetName(handle_t h, char *name, unsigned int n) { strncpy(name, NAME, n); return 0; }
int nvmlDeviceGetPowerUsage(handle_t h, unsigned int *mw) {
#ifdef POWER_MW
    if (++calls > LOST_AFTER) return 15;
    *mw = POWER_MW; return 0;
#else
    return 3;
#endif
}
int nvmlDeviceGetTotalEnergyConsumption(handle_t h, unsigned long long *mj) {
#ifdef POWER_MW
    *mj = 86400000ULL + 500ULL * calls; return 0;
#else
    return 3;
#endif
}
"""


def _with_nvml_library(tmp_path, code, *defines):
    pytest.importorskip("pynvml")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build the NVML answers")
    (tmp_path / "nvml.c").write_text(NVML_ANSWERS)
    subprocess.run(["cc", "-shared", "-fPIC", *defines, "-o", str(tmp_path / "libnvidia-ml.so.1"),
                    str(tmp_path / "nvml.c")], check=True)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_nvml_on_jetson_is_unavailable_at_open_with_the_reason(tmp_path):
    code = ("from hwnas_agent.power import open_source, SensorUnavailable\n"
            "try:\n    open_source('nvml')\nexcept SensorUnavailable as exc:\n    print(exc)\n")
    out = _with_nvml_library(tmp_path, code, '-DNAME="Orin (nvgpu)"')
    assert "NVML answers 'Not Supported' to the power query of GPU 0 (Orin (nvgpu))" in out
    assert "use the 'ina3221' or 'tegrastats' source" in out


def test_nvml_counter_and_a_gpu_lost_mid_job_is_a_sensor_error(tmp_path):
    code = ("from hwnas_agent.power import open_source, SensorUnavailable\n"
            "source = open_source('nvml')\n"
            "print(source.has_energy_counter, source.covers)\n"
            "sample = source.read()\nprint(sample.watts, sample.energy_j)\n"
            "try:\n    source.read(); source.read()\nexcept SensorUnavailable as exc:\n"
            "    print('lost:', exc)\n")
    out = _with_nvml_library(tmp_path, code, '-DNAME="NVIDIA H100 80GB HBM3"', "-DPOWER_MW=123456",
                             "-DLOST_AFTER=3").splitlines()
    assert out[0] == "True GPU 0 board power (NVIDIA H100 80GB HBM3, NVML); excludes the host"
    assert out[1] == "123.456 86401.0"  # mW -> W, mJ -> J (two power queries so far)
    assert out[2] == "lost: NVML GPU 0: GPU is lost"


# -- discovery ------------------------------------------------------------------------------

def test_missing_sensors_are_unavailable_not_errors(tmp_path):
    for kind in ("ina3221", "hwmon", "rapl", "power_supply"):
        with pytest.raises(SensorUnavailable):
            open_source(kind, {"sysfs_root": str(tmp_path)})
    with pytest.raises(SensorUnavailable, match="not found"):
        open_source("tegrastats", {"command": [str(tmp_path / "nope")]})
    with pytest.raises(SensorUnavailable, match="bad options"):
        open_source("rapl", {"sysfs_root": str(tmp_path), "colour": "red"})


def test_detect_finds_what_the_tree_has(tmp_path):
    fx.orin_nano_hwmon(tmp_path)
    fx.rapl(tmp_path)
    kinds = [found["kind"] for found in power.detect(str(tmp_path))]
    assert kinds[0] == "ina3221" and "rapl" in kinds and "hwmon" not in kinds


# -- window, integration, summary -----------------------------------------------------------

class Profile(PowerSource):
    """A source whose watts follow a known function of monotonic time (and whose counter, if
    asked, is its exact integral): for checking the arithmetic, not a sensor."""

    kind, covers, scope, figure, rate_hz = "command", "test profile", "partial", "profile", 100.0

    def __init__(self, watts, energy=None, fail_after=None):
        self.watts, self.energy, self.fail_after = watts, energy, fail_after
        self.has_energy_counter = energy is not None

    def read(self):
        now = time.monotonic()
        if self.fail_after is not None and now > self.fail_after:
            raise SensorUnavailable("meter unplugged")
        return PowerSample(self.watts(now), energy_j=self.energy(now) if self.energy else None,
                           time_s=now)


def test_trapezoid_is_exact_for_a_linear_ramp():
    from hwnas_agent.power.sampler import trapezoid

    samples = [PowerSample(2.0 + 3.0 * t, time_s=t) for t in (0.0, 0.1, 0.35, 1.0)]
    energy, first, last, points = trapezoid(samples)
    assert energy == pytest.approx(2.0 * 1.0 + 1.5) and (first, last, points) == (0.0, 1.0, 4)


def test_the_window_is_edged_by_readings_at_its_start_and_end():
    source = Profile(lambda t: 5.0)
    sampler = PowerSampler(source, rate_hz=7).start()
    time.sleep(0.5)
    window = sampler.stop()
    assert window.samples[0].time_s <= window.started_s + 0.01
    assert window.samples[-1].time_s >= window.stopped_s


def test_a_line_meter_window_waits_for_the_line_after_the_end(tmp_path):
    meter = fx.program(tmp_path, "slow-meter", "3.00 W", every_s=0.2)
    source = open_source("command", {"command": [str(meter)], "rate_hz": 5})
    try:
        sampler = PowerSampler(source).start()
        time.sleep(0.5)
        window = sampler.stop()
    finally:
        source.close()
    assert not window.errors
    assert window.samples[0].time_s <= window.started_s  # the line before the start
    assert window.samples[-1].time_s >= window.stopped_s  # the line after the end


def _phase(source, seconds, rate_hz=50):
    sampler = PowerSampler(source, rate_hz=rate_hz).start()
    time.sleep(seconds)
    return sampler.stop()


def test_summary_states_source_figure_method_and_both_integrals():
    from hwnas_agent.power.sampler import summarize

    origin = time.monotonic()
    ramp = Profile(lambda t: 4.0 + 2.0 * (t - origin), energy=lambda t: 4.0 * (t - origin) + (t - origin) ** 2)
    idle = _phase(Profile(lambda t: 2.0), 0.2)
    timed = _phase(ramp, 0.6)
    result = summarize(ramp, idle, timed, timed_seconds=0.6, inferences=300, min_samples=10)
    for key in ("kind", "covers", "scope", "figure", "rate_hz", "energy_counter", "clock", "method",
                "samples", "min_samples", "window_s", "achieved_rate_hz", "max_gap_s",
                "timed_seconds", "inferences", "mean_w", "peak_w", "energy_j",
                "energy_mj_per_inference", "idle_w", "idle_samples", "idle_window_s", "idle_method",
                "energy_mj_per_inference_above_idle", "trapezoid", "counter",
                "counter_vs_trapezoid", "rails_w"):
        assert key in result, key
    assert result["method"] == "counter" and result["idle_method"] == "trapezoid"
    first, last = timed.samples[0].time_s - origin, timed.samples[-1].time_s - origin
    truth_w = 4.0 + (first + last)  # mean of a linear ramp over the window
    assert result["mean_w"] == pytest.approx(truth_w, rel=1e-9)
    assert result["trapezoid"]["mean_w"] == pytest.approx(truth_w, rel=1e-9)  # exact on a ramp
    assert result["energy_mj_per_inference"] == pytest.approx(truth_w * 0.6 / 300 * 1000)
    assert result["idle_w"] == pytest.approx(2.0)
    assert result["energy_mj_per_inference_above_idle"] == pytest.approx((truth_w - 2.0) * 2.0)
    assert result["peak_w"] == pytest.approx(4.0 + 2.0 * last)


def test_summary_of_a_source_without_counter_uses_the_trapezoid():
    from hwnas_agent.power.sampler import summarize

    source = Profile(lambda t: 6.0)
    result = summarize(source, _phase(source, 0.1), _phase(source, 0.3), 0.3, 100, min_samples=5)
    assert result["method"] == "trapezoid" and result["counter"] is None
    assert result["mean_w"] == pytest.approx(6.0) and result["counter_vs_trapezoid"] is None


def test_too_few_samples_fail_the_measurement():
    from hwnas_agent.power.sampler import PowerUnavailable, summarize

    source = Profile(lambda t: 6.0)
    with pytest.raises(PowerUnavailable, match=r"usable readings in the timed phase \(at least 50"):
        summarize(source, _phase(source, 0.1), _phase(source, 0.1, rate_hz=20), 0.1, 10,
                  min_samples=50)


def test_a_sensor_lost_mid_phase_fails_the_measurement():
    from hwnas_agent.power.sampler import PowerUnavailable, summarize

    healthy = Profile(lambda t: 6.0)
    idle = _phase(healthy, 0.1)
    lost = Profile(lambda t: 6.0, fail_after=time.monotonic() + 0.15)
    sampler = PowerSampler(lost, rate_hz=50).start()
    time.sleep(0.3)
    assert sampler.enough(10 ** 6)  # the timed phase stops waiting for samples
    timed = sampler.stop()
    with pytest.raises(PowerUnavailable, match="failed during the timed phase: meter unplugged"):
        summarize(lost, idle, timed, 0.3, 100, min_samples=2)


def test_a_window_that_does_not_cover_the_phase_fails():
    from hwnas_agent.power.sampler import PowerUnavailable, Window, summarize

    source = Profile(lambda t: 6.0)
    samples = [PowerSample(6.0, time_s=t) for t in (10.0, 10.1, 10.2)]
    window = Window(samples, [], started_s=10.0, stopped_s=11.0)
    with pytest.raises(PowerUnavailable, match="does not cover it"):
        summarize(source, window, window, 1.0, 10, min_samples=2)


# -- the agent: a measurement asked for power never ends "done" without it -------------------

def test_a_job_whose_meter_dies_fails_with_the_sensor_and_the_reason(tmp_path, models_dir):
    from hwnas_agent.protocol import MeasureRequest

    from hwnas.errors import MeasurementError
    from hwnas.records import Artifact
    from hwnas.remote.local import LocalAgentProcess

    meter = tmp_path / "meter-dies"  # 1.5 s of readings: through the idle phase, not the timed one
    meter.write_text("#!/bin/sh\ni=0\nwhile [ $i -lt 30 ]; do echo '3.20 W'; sleep 0.05; "
                     "i=$((i+1)); done\necho 'meter: lost USB connection' >&2\nexit 1\n")
    meter.chmod(0o755)
    # the meter is the agent's configuration; the request only names it
    process = LocalAgentProcess(tmp_path / "state", power_sources={
        "command": {"kind": "command", "options": {"command": str(meter), "rate_hz": 20}}})
    process.start()
    client = process.client("power-test")
    try:
        artifact = Artifact.from_file(models_dir / "small.onnx", {}, 0)
        client.ensure_model(artifact)
        request = MeasureRequest(model_sha256=artifact.sha256, warmup_seconds=0.0, min_seconds=3.0,
                                 min_iterations=10, rounds=2, idle_seconds=0.5, timeout_s=60,
                                 power_source="command")
        with pytest.raises(MeasurementError) as caught:
            client.measure(request)
        message = str(caught.value)
        assert "PowerUnavailable" in message and "'command'" in message
        assert "lost USB connection" in message  # the meter's own last words
    finally:
        process.stop()
