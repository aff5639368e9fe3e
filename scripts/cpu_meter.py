#!/usr/bin/env python3
"""A power MODEL, not a sensor: prints watts computed from this machine's CPU busy fraction.

For tests and demos on machines that expose no power sensor (this project's VM has no RAPL,
hwmon or thermal zone). Every interval it reads the aggregate ``cpu`` line of /proc/stat (or
the ``cpuN`` lines of --cpus) and prints one line in a USB meter's format::

    12.00 V 0.3375 A 4.050 W

where W = idle_w + busy × (busy_w − idle_w), busy = the fraction of CPU time not idle
(idle + iowait) over the interval, and A = W / V at the nominal --volts. Nothing here is
measured but the CPU time: the watts are only as true as the two parameters. The first line
is ``# scope: model ...``, which makes the agent's 'command' source label the figures
``model`` whatever its configuration says; a device profile using this script must also say
so (power.options: scope: model, covers: "linear model of CPU busy fraction, not a sensor").

    python3 scripts/cpu_meter.py --idle-w 4 --busy-w 15 --interval 0.05 [--cpus 0,1]

Standard library only; runs on Python >= 3.6 (the agent's devices included).
"""

import argparse
import sys
import time


def cpu_times(proc_stat, cpus):
    """(busy, total) jiffies summed over the aggregate line, or over the cpuN lines listed."""
    wanted = ["cpu"] if not cpus else ["cpu%d" % c for c in cpus]
    busy = total = 0
    found = set()
    with open(proc_stat) as handle:
        for line in handle:
            fields = line.split()
            if fields and fields[0] in wanted:
                values = [int(v) for v in fields[1:]]
                idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                # guest time is already counted in user/nice: fields 9-10 are left out
                counted = sum(values[:8])
                busy += counted - idle
                total += counted
                found.add(fields[0])
    missing = sorted(set(wanted) - found)
    if missing:
        raise SystemExit("cpu_meter: %s not in %s" % (", ".join(missing), proc_stat))
    return busy, total


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-w", type=float, required=True, help="modelled watts at 0%% busy")
    parser.add_argument("--busy-w", type=float, required=True, help="modelled watts at 100%% busy")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between lines")
    parser.add_argument("--volts", type=float, default=12.0, help="nominal supply voltage printed")
    parser.add_argument("--cpus", default="", help="comma-separated CPU numbers (default: all)")
    parser.add_argument("--count", type=int, default=0, help="stop after this many lines (0: never)")
    parser.add_argument("--proc-stat", default="/proc/stat", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.volts <= 0 or args.busy_w < args.idle_w or args.idle_w < 0:
        parser.error("need interval > 0, volts > 0 and 0 <= idle-w <= busy-w")
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    print("# scope: model -- cpu_meter.py: W = %g + busy x %g (linear model of the CPU busy "
          "fraction of %s), not a sensor" % (args.idle_w, args.busy_w - args.idle_w,
                                             "CPUs " + args.cpus if cpus else "all CPUs"))
    sys.stdout.flush()
    previous = cpu_times(args.proc_stat, cpus)
    deadline = time.monotonic()
    printed = 0
    try:
        while args.count == 0 or printed < args.count:
            deadline += args.interval
            time.sleep(max(0.0, deadline - time.monotonic()))
            current = cpu_times(args.proc_stat, cpus)
            total = current[1] - previous[1]
            busy = min(1.0, max(0.0, (current[0] - previous[0]) / float(total))) if total > 0 else 0.0
            previous = current
            watts = args.idle_w + busy * (args.busy_w - args.idle_w)
            print("%.2f V %.4f A %.3f W" % (args.volts, watts / args.volts, watts))
            sys.stdout.flush()
            printed += 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
