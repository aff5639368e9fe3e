"""hwnas-agent serve | measure MODEL.onnx | facts | version | unit"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import List, Optional

from hwnas_agent import __version__
from hwnas_agent.config import AgentConfig, AgentConfigError

_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_./@:+=,-]+$")


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
    serve.add_argument("--config", default=None,
                       help="the agent's configuration file (JSON, mode 0600): port, state "
                            "folder, token file, power sources, limits; options below override it")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None,
                       help="default 8765; 0 picks a free port (announced on stdout)")
    serve.add_argument("--state-dir", default=None, help="models and jobs live here")
    serve.add_argument("--token-file", default=None,
                       help="the secret every request must carry (default STATE_DIR/token; "
                            "created, mode 0600, when missing)")
    serve.add_argument("--max-queue", type=int, default=None, help="jobs waiting at most")
    serve.add_argument("--max-store-mb", type=float, default=None,
                       help="model store size cap; least recently used models are evicted")
    serve.add_argument("--worker-memory-mb", type=float, default=None,
                       help="memory limit of all workers together (they run one at a time; "
                            "default: half the RAM; 0: none)")
    serve.add_argument("--max-connections", type=int, default=None,
                       help="open connections at most (default 64)")
    serve.add_argument("--max-job-history", type=int, default=None,
                       help="finished jobs kept (default 500; never one whose result was not "
                            "fetched)")
    serve.add_argument("--job-history-days", type=float, default=None,
                       help="fetched finished jobs older than this are removed (default 7)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow a non-loopback address (not recommended: use SSH)")
    serve.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--lease-stdin", action="store_true", help=argparse.SUPPRESS)
    measure = verbs.add_parser("measure", help="measure one ONNX file now; JSON on stdout")
    measure.add_argument("model", help="path to an .onnx file")
    _add_measure_options(measure)
    verbs.add_parser("facts", help="print what this device is and has, as JSON")
    verbs.add_parser("version", help="print the agent and protocol versions")
    unit = verbs.add_parser("unit", help="print a systemd user unit (restart on failure) for "
                                         "this install")
    unit.add_argument("--config", default=None, help="the agent configuration file it serves with")
    unit.add_argument("--port", type=int, default=8765, help="without --config")
    unit.add_argument("--state-dir", default="%h/.local/state/hwnas-agent",
                      help="without --config (systemd specifiers such as %%h allowed)")
    return parser


def systemd_quote(argument: str) -> str:
    """One ExecStart argument, taken literally by systemd (quotes, specifiers, variables)."""
    if _SYSTEMD_PLAIN.match(argument):
        return argument
    if any(ord(c) < 32 or ord(c) == 127 for c in argument):
        raise ValueError("%r holds control characters, which a unit file cannot carry" % argument)
    escaped = argument.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"%s"' % escaped.replace("$", "$$")


def systemd_unit(python: str = sys.executable, port: int = 8765,
                 state_dir: str = "%h/.local/state/hwnas-agent", config: Optional[str] = None
                 ) -> str:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hwnas-agent.service")
    with open(path) as handle:
        text = handle.read()
    if config is not None:
        options = "--config " + systemd_quote(os.path.abspath(config))
    else:
        options = "--port %d --state-dir %s" % (port, state_dir)
    return text.replace("@PYTHON@", systemd_quote(python)).replace("@OPTIONS@", options)


def serve_config(args: argparse.Namespace) -> AgentConfig:
    """The configuration file, if any, with the command line's options over it."""
    if args.config is not None:
        from hwnas_agent.config import load

        config = load(args.config)
    else:
        config = AgentConfig()
    overrides = {name: getattr(args, name) for name in
                 ("host", "port", "state_dir", "token_file", "max_queue", "max_store_mb",
                  "worker_memory_mb", "max_connections", "max_job_history", "job_history_days")
                 if getattr(args, name) is not None}
    merged = dict(dataclasses.asdict(config), **overrides)
    merged["power_sources"] = {name: dataclasses.asdict(source)
                               for name, source in config.power_sources.items()}
    return AgentConfig.from_dict(merged, os.getcwd(), args.config or "command line")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "serve":
        from hwnas_agent.jobs import AgentBusy
        from hwnas_agent.server import serve

        try:
            return serve(serve_config(args), args.allow_remote, args.parent_pid, args.lease_stdin)
        except (AgentConfigError, AgentBusy) as exc:
            print("hwnas-agent: error: %s" % exc, file=sys.stderr)
            return 2
    if args.verb == "measure":
        from hwnas_agent.onnx_refs import ModelRefused, check_external_data
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
        try:  # a file of one's own, but it still reads nothing outside its folder
            check_external_data(args.model)
        except ModelRefused as exc:
            print("hwnas-agent: %s" % exc, file=sys.stderr)
            return 2
        print(json.dumps(measure_file(args.model, request), indent=1, sort_keys=True))
        return 0
    if args.verb == "unit":
        print(systemd_unit(port=args.port, state_dir=args.state_dir, config=args.config), end="")
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
