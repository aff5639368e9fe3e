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


def rapl(root: Path, energy_uj: int = 262_000_000_000, max_range: int = 262_143_328_850) -> None:
    base = "class/powercap/intel-rapl:0/"
    write(root, base + "name", "package-0")
    write(root, base + "energy_uj", str(energy_uj))
    write(root, base + "max_energy_range_uj", str(max_range))
    write(root, "class/powercap/intel-rapl:0:0/name", "core")
    write(root, "class/powercap/intel-rapl:0:0/energy_uj", "1000")
    write(root, "class/powercap/intel-rapl:0:0/max_energy_range_uj", str(max_range))


def qualcomm_battery(root: Path) -> float:
    base = "class/power_supply/battery/"
    write(root, base + "type", "Battery")
    write(root, base + "voltage_now", "3987000")  # µV
    write(root, base + "current_now", "-512000")  # µA, negative: discharging
    write(root, "class/power_supply/usb/type", "USB")
    write(root, "class/power_supply/usb/online", "0")
    return 3.987 * 0.512


def program(folder: Path, name: str, output: str, repeat: bool = True) -> Path:
    """An executable printing ``output`` (once, or again every 0.02 s): a tool's real output."""
    path = folder / name
    loop = "while true; do cat <<'EOF'\n%s\nEOF\nsleep 0.02; done" if repeat else "cat <<'EOF'\n%s\nEOF"
    path.write_text("#!/bin/sh\n" + loop % output.rstrip("\n") + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


