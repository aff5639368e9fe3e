"""hwnas-agent serve | measure MODEL.onnx | facts | version | unit"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from hwnas_agent import __version__


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "hwnas-agent")


def _add_measure_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--providers", default="CPUExecutionProvider",
                        help="comma-separated onnxruntime execution providers, in priority order")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = runtime default)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup-iterations", type=int, default=10)
    parser.add_argument("--warmup-seconds", type=float, default=0.5)
    parser.add_argument("--min-iterations", type=int, default=100)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--disable-cpu-fallback", action="store_true",
                        help="fail rather than run unsupported nodes on the CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwnas-agent", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    serve = verbs.add_parser("serve", help="run the daemon (HTTP+JSON on 127.0.0.1)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port (announced on stdout)")
    serve.add_argument("--state-dir", default=default_state_dir(), help="models and jobs live here")
    serve.add_argument("--max-queue", type=int, default=16, help="jobs waiting at most")
    serve.add_argument("--max-store-mb", type=float, default=2000.0,
                       help="model store size cap; least recently used models are evicted")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback address (not recommended: use SSH)")
    measure = verbs.add_parser("measure", help="measure one ONNX file now; JSON on stdout")
    measure.add_argument("model", help="path to an .onnx file")
    _add_measure_options(measure)
    verbs.add_parser("facts", help="print what this device is and has, as JSON")
    verbs.add_parser("version", help="print the agent and protocol versions")
    unit = verbs.add_parser("unit", help="print a systemd user unit (restart on failure) for "
                                         "this install")
    unit.add_argument("--port", type=int, default=8765)
    unit.add_argument("--state-dir", default="%h/.local/state/hwnas-agent")
    return parser


def systemd_unit(python: str = sys.executable, port: int = 8765,
                 state_dir: str = "%h/.local/state/hwnas-agent") -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hwnas-agent.service")
    with open(path) as handle:
        text = handle.read()
    return (text.replace("@PYTHON@", python).replace("@PORT@", str(port))
            .replace("@STATE_DIR@", state_dir))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "serve":
        from hwnas_agent.server import serve

        return serve(args.state_dir, args.host, args.port, args.allow_remote, args.max_queue,
                     args.max_store_mb)
    if args.verb == "measure":
        from hwnas_agent.protocol import MeasureRequest, ProtocolError
        from hwnas_agent.storage import sha256_hex
        from hwnas_agent.worker import measure_file

        with open(args.model, "rb") as handle:
            sha256 = sha256_hex(handle.read())
        try:
            request = MeasureRequest.from_dict({
                "model_sha256": sha256,
                "execution_providers": [p.strip() for p in args.providers.split(",") if p.strip()],
                "intra_op_threads": args.threads, "batch_size": args.batch_size,
                "warmup_iterations": args.warmup_iterations, "warmup_seconds": args.warmup_seconds,
                "min_iterations": args.min_iterations, "min_seconds": args.min_seconds,
                "rounds": args.rounds, "disable_cpu_fallback": args.disable_cpu_fallback,
            })
        except ProtocolError as exc:
            print("hwnas-agent: %s" % exc.message, file=sys.stderr)
            return 2
        print(json.dumps(measure_file(args.model, request), indent=1, sort_keys=True))
        return 0
    if args.verb == "unit":
        print(systemd_unit(port=args.port, state_dir=args.state_dir), end="")
        return 0
    if args.verb == "facts":
        from hwnas_agent.facts import device_facts

        print(json.dumps(device_facts(), indent=1, sort_keys=True))
        return 0
    from hwnas_agent.protocol import PROTOCOL_VERSION

    print(json.dumps({"agent_version": __version__, "protocol_version": PROTOCOL_VERSION}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
