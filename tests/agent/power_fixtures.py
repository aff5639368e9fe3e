"""Sysfs trees and tool output in the exact formats real devices produce (see
shared/measurement-formats.md), written into a temporary folder for the readers."""

from __future__ import annotations

import stat
from pathlib import Path

TEGRASTATS_ORIN_JP5 = ("05-15-2025 18:30:28 RAM 6982/7620MB (lfb 5x1MB) SWAP 2640/16384MB "
                       "(cached 202MB) CPU [97%@1984,97%@1984] EMC_FREQ 18%@3199 GR3D_FREQ 84%@[713] "
                       "tj@65.562C soc1@64.718C cv2@60.875C VDD_IN 17946mW/15710mW "
                       "VDD_CPU_GPU_CV 8896mW/7585mW VDD_SOC 3923mW/3515mW")
TEGRASTATS_AGX_JP7 = ("11-02-2025 10:01:02 RAM 3021/62841MB (lfb 4x4MB) CPU [1%@729,0%@729] "
                      "cpu@52.968C/52.968C tj@54.5C/54.5C VDD_GPU_SOC 5139mW/5139mW/5139mW "
                      "VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW")
TEGRASTATS_TX2 = ("RAM 2017/7854MB (lfb 1030x4MB) CPU [2%@345,off,off,1%@345,0%@345,0%@345] "
                  "EMC_FREQ 0% GR3D_FREQ 0% PLL@36C MCPU@36C PMIC@100C GPU@34.5C "
                  "VDD_SYS_GPU 182/182 VDD_SYS_SOC 730/730 VDD_4V0_WIFI 0/0 VDD_IN 5297/5297 "
                  "VDD_SYS_CPU 1917/1917 VDD_SYS_DDR 1241/1241")
TEGRASTATS_NANO = ("RAM 1589/3956MB (lfb 263x4MB) SWAP 0/1978MB (cached 0MB) CPU [9%@102,5%@102,"
                   "4%@102,4%@102] EMC_FREQ 0% GR3D_FREQ 0% PLL@26C CPU@28.5C PMIC@100C GPU@26C "
                   "AO@35C thermal@27.25C POM_5V_IN 933/933 POM_5V_GPU 0/0 POM_5V_CPU 84/84")
TEGRASTATS_XAVIER = ("RAM 3224/15823MB (lfb 2914x4MB) CPU [2%@1190,1%@1190,off,off] EMC_FREQ 0% "
                     "GR3D_FREQ 0% AO@36C GPU@36.5C Tdiode@38.25C AUX@35.5C CPU@37.5C "
                     "thermal@36.65C Tboard@36C GPU 1155/1155 CPU 385/385 SOC 2504/2503 CV 0/0 "
                     "VDDRQ 192/192 SYS5V 2692/2692")

# Jetson AGX Thor, JetPack 7 (L4T R38/R39): VIN is the carrier-board INA238, the board
# input; VDD_GPU, VDD_CPU_SOC_MSS and VIN_SYS_5V0 are module rails inside it. VDD_GPU reads
# below zero at idle (an offset of its monitor). Line quoted in a public Thor profiling script
# on GitHub ("실제 출력 예", 05-14-2026); its CPU list is cut to the first core as quoted there.
TEGRASTATS_THOR_IDLE = ("05-14-2026 21:36:35 RAM 26063/125772MB (lfb 35x4MB) CPU [2%@972] "
                        "VDD_GPU -392mW/-392mW VDD_CPU_SOC_MSS 3924mW/3835mW "
                        "VIN_SYS_5V0 5064mW/5055mW VIN 15004mW/15096mW")
# Thor under load, R39 format (three values per rail), from the test fixtures of a public Thor
# telemetry tool on GitHub (08-08-2026).
TEGRASTATS_THOR_LOADED = ("08-08-2026 21:00:39 RAM 8353/125749MB (lfb 31x4MB) "
                          "CPU [90%@2601,75%@2601,off,7%@2601] EMC_FREQ 34%@4266 "
                          "GR3D_FREQ 87%@[1574,1574,1574] NVENC0_FREQ @1691 VIC off "
                          "cpu@58.25C/61.75C tj@66.625C/66.625C gpu@56.937C/66.625C "
                          "soc012@55.375C/58.781C soc345@55.812C/60.031C "
                          "VDD_GPU 37939mW/8660mW/37939mW VDD_CPU_SOC_MSS 30059mW/12281mW/30059mW "
                          "VIN_SYS_5V0 15486mW/7424mW/15486mW VIN 124486mW/36487mW/124486mW")
# tegrastats run without root: the Orin line above as it comes without its rails (issue 9:
# "tegrastats without root prints no rails").
TEGRASTATS_ORIN_NO_ROOT = TEGRASTATS_ORIN_JP5.split(" VDD_IN")[0]

PI5_PMIC = """\
 3V7_WL_SW_A current(0)=0.00195186A
   3V3_SYS_A current(1)=0.12687090A
   1V8_SYS_A current(2)=0.18251210A
  DDR_VDD2_A current(3)=0.02049452A
  DDR_VDDQ_A current(4)=0.00000000A
   1V1_SYS_A current(5)=0.17078400A
   0V8_SYS_A current(6)=0.38454110A
  VDD_CORE_A current(7)=0.56259000A
 3V7_WL_SW_V volt(8)=3.70720000V
   3V3_SYS_V volt(9)=3.32580900V
   1V8_SYS_V volt(10)=1.80014600V
  DDR_VDD2_V volt(11)=1.11185500V
  DDR_VDDQ_V volt(12)=0.60139160V
   1V1_SYS_V volt(13)=1.10598900V
   0V8_SYS_V volt(14)=0.80062650V
  VDD_CORE_V volt(15)=0.76798460V
    3V3_DAC_A current(16)=0.00000000A
    3V3_ADC_A current(17)=0.00021978A
    0V8_AON_A current(18)=0.00478878A
     HDMI_A current(22)=0.02112990A
    3V3_DAC_V volt(19)=3.31664000V
    3V3_ADC_V volt(20)=3.32030300V
    0V8_AON_V volt(21)=0.79843120V
     HDMI_V volt(23)=5.14584000V
     EXT5V_V volt(24)=5.14158000V
      BATT_V volt(25)=3.28033900V
"""
PI4_PMIC = 'error=1 error_msg="Command not registered"\n'


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def orin_nano_hwmon(root: Path) -> float:
    """JetPack 5/6 hwmon tree of an Orin Nano; returns the expected board watts (VDD_IN)."""
    base = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/"
    rails = [("VDD_IN", 5048, 1192), ("VDD_CPU_GPU_CV", 5040, 320), ("VDD_SOC", 5048, 488)]
    for index, (label, mv, ma) in enumerate(rails, start=1):
        write(root, base + f"in{index}_label", label)
        write(root, base + f"in{index}_input", str(mv))
        write(root, base + f"curr{index}_input", str(ma))
        write(root, base + f"curr{index}_max", "32760")
        write(root, base + f"in{index + 3}_input", "5960")  # shunt voltage, µV: not a rail
    write(root, base + "in7_label", "sum of shunt voltages")
    write(root, base + "in7_input", "17880")
    write(root, base + "update_interval", "100")
    write(root, base + "samples", "1024")
    return 5048 * 1192 / 1e6


def agx_orin_hwmon(root: Path) -> float:
    """AGX Orin: two INA3221 at 1-0040 and 1-0041, no VDD_IN, an NC channel: sum of rails."""
    total = 0.0
    chips = {"1-0040": [("VDD_GPU_SOC", 19936, 256), ("VDD_CPU_CV", 19936, 160),
                        ("VIN_SYS_5V0", 5016, 1096)],
             "1-0041": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5024, 304), ("NC", 0, 0)]}
    for address, rails in chips.items():
        base = f"bus/i2c/drivers/ina3221/{address}/hwmon/hwmon{4 if address.endswith('1') else 3}/"
        for index, (label, mv, ma) in enumerate(rails, start=1):
            write(root, base + f"in{index}_label", label)
            write(root, base + f"in{index}_input", str(mv))
            write(root, base + f"curr{index}_input", str(ma))
            if label != "NC":
                total += mv * ma / 1e6
    return total


def jetpack4_iio(root: Path) -> float:
    base = "bus/i2c/drivers/ina3221x/6-0040/iio:device0/"
    for index, (name, mw) in enumerate([("POM_5V_IN", 2850), ("POM_5V_GPU", 40), ("POM_5V_CPU", 610)]):
        write(root, base + f"rail_name_{index}", name)
        write(root, base + f"in_power{index}_input", str(mw))
        write(root, base + f"in_voltage{index}_input", "5000")
        write(root, base + f"in_current{index}_input", str(mw // 5))
    return 2.85


def ina219_hwmon(root: Path) -> float:
    base = "class/hwmon/hwmon2/"
    write(root, base + "name", "ina219")
    write(root, base + "power1_input", "3650000")  # µW
    write(root, base + "in1_input", "5080")  # mV
    write(root, base + "curr1_input", "718")  # mA
    write(root, "class/hwmon/hwmon0/name", "cpu_thermal")
    write(root, "class/hwmon/hwmon0/temp1_input", "48300")
    return 3.65


def amdgpu_van_gogh_hwmon(root: Path) -> float:
    """The amdgpu hwmon folder of a Van Gogh APU (Steam Deck): the driver's one APU power
    sensor shown twice, as power1 "slowPPT" and power2 "fastPPT", the two package power
    tracking limits (caps). Capture: "[PATCH 2/2] drm/amd/pm: add support for hwmon control of
    slow and fast PPT limit on vangogh" (Xiaomeng Hou, amd-gfx, 5 Feb 2021,
    <20210205123924.24129-2-Xiaomeng.Hou@amd.com>), whose `sensors` example reads
    "slowPPT: 9.04W (cap = 15.00 W)" and "fastPPT: 9.04W (cap = 18.00 W)": both
    power*_average files are amdgpu_hwmon_show_power_avg, one sensor, µW. The power*_cap_default
    files came with a later patch; cap_min/cap_max/cap_default values, the voltages and the
    temperature are illustrative. Returns the APU's watts (once, not twice)."""
    base = "class/hwmon/hwmon5/"
    files = {"name": "amdgpu",
             "in0_input": "1056", "in0_label": "vddgfx",  # mV
             "in1_input": "878", "in1_label": "vddnb",
             "temp1_input": "51000", "temp1_label": "edge",  # m°C
             "freq1_input": "1600000000", "freq1_label": "sclk",  # Hz
             "power1_average": "9040000", "power1_label": "slowPPT",
             "power1_cap": "15000000", "power1_cap_min": "0", "power1_cap_max": "29000000",
             "power1_cap_default": "15000000",
             "power2_average": "9040000", "power2_label": "fastPPT",
             "power2_cap": "18000000", "power2_cap_min": "0", "power2_cap_max": "30000000",
             "power2_cap_default": "15000000"}
    for name, value in files.items():
        write(root, base + name, value)
    return 9.04


def zenpower_hwmon(root: Path) -> float:
    """zenpower (github.com/ocerman/zenpower, zenpower.c) on a Ryzen: two distinct SVI2
    telemetry planes, power1 "SVI2_P_Core" and power2 "SVI2_P_SoC" in µW, which add up.
    Readings illustrative. Returns their sum in watts."""
    base = "class/hwmon/hwmon3/"
    files = {"name": "zenpower",
             "in1_input": "1337", "in1_label": "SVI2_Core", "in2_input": "1081",
             "in2_label": "SVI2_SoC", "curr1_input": "23625", "curr1_label": "SVI2_C_Core",
             "curr2_input": "10117", "curr2_label": "SVI2_C_SoC",
             "power1_input": "31587000", "power1_label": "SVI2_P_Core",
             "power2_input": "10936000", "power2_label": "SVI2_P_SoC",
             "temp1_input": "62500", "temp1_label": "Tdie", "temp2_input": "62500",
             "temp2_label": "Tctl"}
    for name, value in files.items():
        write(root, base + name, value)
    return 31.587 + 10.936


def rapl(root: Path, energy_uj: int = 262_000_000_000, max_range: int = 262_143_328_850) -> None:
    base = "class/powercap/intel-rapl:0/"
    write(root, base + "name", "package-0")
    write(root, base + "energy_uj", str(energy_uj))
    write(root, base + "max_energy_range_uj", str(max_range))
    write(root, "class/powercap/intel-rapl:0:0/name", "core")
    write(root, "class/powercap/intel-rapl:0:0/energy_uj", "1000")
    write(root, "class/powercap/intel-rapl:0:0/max_energy_range_uj", str(max_range))


def qualcomm_battery(root: Path) -> float:
    """A Qualcomm board's fuel gauge while it runs on battery (power_supply ABI:
    Documentation/ABI/testing/sysfs-class-power)."""
    base = "class/power_supply/battery/"
    write(root, base + "type", "Battery")
    write(root, base + "status", "Discharging")
    write(root, base + "voltage_now", "3987000")  # µV
    write(root, base + "current_now", "-512000")  # µA, negative: discharging
    write(root, "class/power_supply/usb/type", "USB")
    write(root, "class/power_supply/usb/online", "0")
    return 3.987 * 0.512


def thor_sysfs(root: Path) -> float:
    """Jetson AGX Thor: the module's INA3221 (hwmon driver) and the carrier board's INA238;
    returns the expected board watts (VIN). File names and units are the kernel drivers'
    (Documentation/hwmon/ina3221.rst and ina238.rst: power1_input µW, in1_input mV,
    curr1_input mA); rail labels and readings follow TEGRASTATS_THOR_IDLE; the I2C addresses
    and hwmon numbers are illustrative (they vary by board: the reader globs them)."""
    base = "bus/i2c/drivers/ina3221/2-0040/hwmon/hwmon1/"
    rails = [("VDD_GPU", 5008, -78), ("VDD_CPU_SOC_MSS", 5016, 782), ("VIN_SYS_5V0", 5000, 1013)]
    for index, (label, mv, ma) in enumerate(rails, start=1):
        write(root, base + f"in{index}_label", label)
        write(root, base + f"in{index}_input", str(mv))
        write(root, base + f"curr{index}_input", str(ma))
    write(root, base + "update_interval", "100")
    vin = "bus/i2c/drivers/ina238/2-0044/hwmon/hwmon2/"
    write(root, vin + "name", "ina238")
    write(root, vin + "in0_input", "2")  # shunt voltage, mV
    write(root, vin + "in1_input", "19984")  # bus voltage, mV
    write(root, vin + "curr1_input", "751")  # mA
    write(root, vin + "power1_input", "15004000")  # µW
    write(root, vin + "temp1_input", "41250")
    return 15.004


def rapl_laptop(root: Path, package_uj: int, psys_uj: int, dram_uj: int = 1_000_000) -> None:
    """An Intel laptop (Skylake and later): package-0 with core/uncore/dram sub-zones and the
    top-level psys (platform) zone, as the intel_rapl powercap driver lays them out
    (Documentation/power/powercap/powercap.rst; psys: kernel commit "powercap / RAPL: add
    support for psys domain")."""
    max_range = 262_143_328_850
    zones = {"intel-rapl:0": ("package-0", package_uj), "intel-rapl:0:0": ("core", package_uj // 2),
             "intel-rapl:0:1": ("uncore", package_uj // 10), "intel-rapl:0:2": ("dram", dram_uj),
             "intel-rapl:1": ("psys", psys_uj)}
    for zone, (name, energy) in zones.items():
        write(root, f"class/powercap/{zone}/name", name)
        write(root, f"class/powercap/{zone}/energy_uj", str(energy))
        write(root, f"class/powercap/{zone}/max_energy_range_uj", str(max_range))


def rapl_server(root: Path, energies_uj: dict) -> None:
    """A two-socket Xeon: package-N with a dram sub-zone each, no psys ({name: µJ})."""
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:0": "dram",
             "intel-rapl:1": "package-1", "intel-rapl:1:0": "dram"}
    for zone, name in zones.items():
        key = name if name.startswith("package") else "package-%s:dram" % zone.split(":")[1]
        write(root, f"class/powercap/{zone}/name", name)
        write(root, f"class/powercap/{zone}/energy_uj", str(energies_uj[key]))
        write(root, f"class/powercap/{zone}/max_energy_range_uj",
              "65712999613" if name == "dram" else "262143328850")


def ucsi_usb_pd(root: Path) -> None:
    """A USB-C port of the UCSI driver under a 20 V / 3.25 A Power Delivery contract
    (drivers/usb/typec/ucsi/psy.c: current_now is the operating current of the request,
    current_max the offer's; the "65 W" of a laptop charger, whatever the board draws)."""
    base = "class/power_supply/ucsi-source-psy-USBC000:001/"
    for name, value in (("type", "USB"), ("usb_type", "C [PD] PD_PPS"), ("online", "1"),
                        ("voltage_min", "5000000"), ("voltage_max", "20000000"),
                        ("voltage_now", "20000000"), ("current_max", "3250000"),
                        ("current_now", "3250000")):
        write(root, base + name, value)


def laptop_battery(root: Path, status: str) -> float:
    """BAT0 of a laptop (ACPI battery: power_now in µW, no current_now); returns its watts."""
    base = "class/power_supply/BAT0/"
    for name, value in (("type", "Battery"), ("status", status), ("present", "1"),
                        ("technology", "Li-ion"), ("voltage_now", "12851000"),
                        ("power_now", "9730000"), ("energy_now", "41220000"),
                        ("capacity", "78")):
        write(root, base + name, value)
    write(root, "class/power_supply/AC/type", "Mains")
    write(root, "class/power_supply/AC/online", "0" if status == "Discharging" else "1")
    return 9.73


# -- external meters, as their tools print them (the 'command' source) ---------------------
# rdserialtool (github.com/rfinnie/rdserialtool, README example) polling an RDTech UM25C:
# a multi-line dump; only its first line is a reading.
RDSERIALTOOL_UM25C = """\
USB: 5.062V, 0.1146A,  0.580W,   44.1\u03a9
Data:  0.01V(+),  0.00V(-), charging mode: DCP 1.5A
Recording (off):    0.000Ah,    0.000Wh,      0 sec at >= 0.13A
Data groups:
    *0:    0.001Ah,    0.009Wh       5:    0.000Ah,    0.000Wh
UM25C, temperature:  25C ( 78F)
Screen: 1/6, brightness: 4/5, timeout: 2 min
Collection time: 2019-02-23 22:53:08.468732"""
# Adafruit_INA219 "getcurrent" example sketch, read from the board's serial port.
INA219_ARDUINO = """\
Bus Voltage:   4.70 V
Shunt Voltage: 20.58 mV
Load Voltage:  4.72 V
Current:       206.20 mA
Power:         970.00 mW
"""
# pyummeter (github.com/valletw/pyummeter) ExportCSV: header, then one row per reading
# (";"-separated, a date column, CRLF line ends as it writes them).
PYUMMETER_CSV = (
    "Date;Voltage (V);Intensity (A);Power (W);Resistance (Ohm);USB D+ (V);USB D- (V);"
    "Charging Mode;Temperature (\u00b0C);Model;Recording;Record duration (sec);"
    "Record intensity (A);Record capacity (Ah);Record energy (Wh);Capacity (Ah);Energy (Wh)\r\n"
    "2026-11-21 10:00:01.250113;5.1;0.328;1.672;9999.9;0.01;0.02;DCP1.5A;20;UM34C;0;240;0.1;"
    "0.016;0.256;0.011;0.056\r\n")
# the um34c tool (github.com/sebastianha/um34c, app.js -p): one JSON object per reading whose
# "power" key is in W by its documentation only: refused unless configured with unit: W.
UM34C_JSON = ('{"timestamp":1732183201250,"voltage":5.08,"current":0.455,"power":2.311,'
              '"temperature":{"celsius":27,"fahrenheit":80},"group":0,"record":{"current":0,'
              '"power":0,"threshold":0.1,"time":0},"connected":true}')
# wattsup.py (Kelsey Jordahl's WattsUp PRO logger): "YYYY-MM-DD HH:MM:SS.ssssss n W V A",
# numbers without units: refused (nothing in the line says which one is the power).
WATTSUP_LOG = "2011-09-20 09:14:29.381260 12 23.4 120.1 0.195"


def program(folder: Path, name: str, output: str, repeat: bool = True, header: str = "",
            every_s: float = 0.02) -> Path:
    """An executable printing ``header`` once, then ``output`` (once, or again every
    ``every_s``): a tool's real output, byte for byte."""
    path = folder / name
    body = "cat <<'EOF'\n%s\nEOF\n" % output.rstrip("\n")
    if repeat:
        body = "while true; do %ssleep %s; done\n" % (body, every_s)
    if header:
        body = "printf '%%s' '%s'\n%s" % (header.replace("'", "'\\''"), body)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
