"""The verbs about devices: profile (models measured side by side), devices check, agent."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwnas.cli.common import DEFAULT_DEVICE, FOUND_FROM, Command, project_file


class ProfileCommand(Command):
    name = "profile"
    help = "measure ONNX models on a device, side by side (and int8/fp16 variants of them)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("models", type=Path, nargs="+",
                            help=".onnx files, or onnxruntime-genai model folders (measured "
                                 "generating: a profile with runtime: {name: genai})")
        parser.add_argument("--device", type=Path, default=None,
                            help=f"device profile YAML (default: {DEFAULT_DEVICE}, {FOUND_FROM})")
        parser.add_argument("--precision", default=None,
                            help="also measure variants made here of a float32 model, e.g. "
                                 "int8,fp16 (fp32: the model as given); int8 is calibrated on --calibration's data, or on "
                                 "random inputs without it")
        parser.add_argument("--calibration", type=Path, default=None,
                            help="search space YAML whose data set calibrates int8 (default: "
                                 "random inputs, said so in the output)")
        parser.add_argument("--calibration-samples", type=int, default=128)
        parser.add_argument("--input-shape", action="append", default=[],
                            help="fix free input dimensions: one sample's shape without the "
                                 "batch, e.g. 3x224x224 (NAME=3x224x224 for several inputs)")
        parser.add_argument("--layers", action="store_true",
                            help="also time each node in profiled runs after the timed ones "
                                 "and print the units (modules) that take the most time")
        parser.add_argument("--top", type=int, default=10,
                            help="how many units --layers prints per model (default 10)")
        parser.add_argument("--json", action="store_true", help="print the measurements as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.config import load_device_profile
        from hwnas.errors import ConfigError
        from hwnas.profile import InputShape, layers_text, profile_models, profile_table

        if args.top < 1:
            raise ConfigError(f"--top {args.top}: give how many units to show, at least 1")

        profile = load_device_profile(args.device or project_file(DEFAULT_DEVICE, "--device"))
        precisions = [p.strip() for p in (args.precision or "").split(",") if p.strip()]
        shapes = [InputShape.parse(text) for text in args.input_shape]
        result = profile_models(args.models, profile, precisions, shapes, args.calibration,
                                args.calibration_samples, layers=args.layers)
        if args.json:
            print(json.dumps([row.to_dict() for row in result.rows], indent=1, sort_keys=True))
        else:
            print(profile_table(result, profile.name))
            if args.layers:
                print(layers_text(result, args.top))
        return 0


class DevicesCommand(Command):
    name = "devices"
    help = "check devices: reachability, host key, agent, facts, a calibration measurement"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["check"], help="what to do")
        parser.add_argument("profiles", type=Path, nargs="+", help="device profile YAML files")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.config import load_device_profile
        from hwnas.remote.check import check_device, check_table

        results = [check_device(load_device_profile(path)) for path in args.profiles]
        print(json.dumps(results, indent=1, sort_keys=True) if args.json else check_table(results))
        return 0 if all(r["ok"] for r in results) else 1


class AgentCommand(Command):
    name = "agent"
    help = "install, inspect or remove the agent on an SSH device"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=["install", "status", "logs", "stop", "uninstall"])
        parser.add_argument("profile", type=Path, help="device profile YAML (connection.kind: ssh)")
        parser.add_argument("--lines", type=int, default=50, help="log lines to show (logs)")

    def run(self, args: argparse.Namespace) -> int:
        from hwnas.config import load_device_profile
        from hwnas.remote.install import RemoteAgent

        remote = RemoteAgent(load_device_profile(args.profile))
        try:
            if args.action == "install":
                from hwnas.train import cache_dir  # imports torch: only where needed

                status = remote.install(cache_dir())
            elif args.action == "logs":
                print(remote.logs(args.lines), end="")
                return 0
            elif args.action == "stop":
                remote.stop()
                status = remote.status()
                if not status.running:  # asked for: not an error to explain
                    print(f"{remote.profile.name}: hwnas-agent stopped; `hwnas agent install "
                          f"PROFILE` starts it again")
                    return 0
            elif args.action == "uninstall":
                remote.uninstall()
                print(f"{remote.profile.name}: hwnas-agent removed")
                return 0
            else:
                status = remote.status()
        finally:
            remote.close()
        print(f"{remote.profile.name}: manager {status.manager}, "
              f"{'running' if status.running else 'not running'}, "
              f"agent {status.agent_version or '-'} ({status.detail})")
        return 0 if args.action == "stop" or status.agent_version else 1
