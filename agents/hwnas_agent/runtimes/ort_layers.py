"""Per-node time from onnxruntime's profiler: which node of the graph costs the time.

Run after the timed rounds, in a session of its own opened with profiling on (the headline
figures are measured without the profiler). Each profiled run gives one duration per node
(onnxruntime's "Node" events, named ``<node>_kernel_time``, in microseconds); a node's figure
is the median over the runs, its share that median over the sum of all nodes' medians. The
profiler's cost is reported beside them: the profiled run's median wall time against the
headline p50. The first profiled run is a warm-up and is left out. Any onnxruntime that has
the profiler (1.14 included); the profile file is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

MAX_LISTED_NODES = 2000
KERNEL_SUFFIX = "_kernel_time"


def _runs(events: List[Dict[str, Any]]) -> List[Tuple[int, int]]:
    """(start, end) in µs of each model_run the profile records, in order."""
    windows = [(int(e["ts"]), int(e["ts"]) + int(e.get("dur", 0))) for e in events
               if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return sorted(windows)


def node_times(events: List[Dict[str, Any]], skip_runs: int = 1
               ) -> Tuple[Dict[str, Dict[str, Any]], int]:
    """Node name -> {op_type, provider, per-run µs}, and the number of runs counted. A node's
    time in a run is the sum of its kernel events inside that run's window (a node of a loop
    body runs several times per inference); runs before ``skip_runs`` are left out."""
    windows = _runs(events)[skip_runs:]
    nodes: Dict[str, Dict[str, Any]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX):
            continue
        start = int(event.get("ts", 0))
        run = next((i for i, (low, high) in enumerate(windows) if low <= start <= high), None)
        if run is None:
            continue
        args = event.get("args") or {}
        node = nodes.setdefault(name[:-len(KERNEL_SUFFIX)], {
            "op_type": args.get("op_name", "?"), "provider": args.get("provider", "?"),
            "per_run": [0.0] * len(windows)})
        node["per_run"][run] += float(event.get("dur", 0))
    return nodes, len(windows)


def summarize(nodes: Dict[str, Dict[str, Any]], runs: int, run_ms: List[float],
              headline_p50_ms: Optional[float]) -> Dict[str, Any]:
    """The layer profile the agent reports (see the module's docstring)."""
    rows = [{"name": name, "op_type": n["op_type"], "provider": n["provider"],
             "median_us": float(statistics.median(n["per_run"]))} for name, n in nodes.items()]
    total = sum(r["median_us"] for r in rows)
    for row in rows:
        row["share"] = row["median_us"] / total if total > 0 else 0.0
    rows.sort(key=lambda r: (-r["median_us"], r["name"]))
    profiled = float(statistics.median(run_ms)) if run_ms else None
    return {
        "source": "onnxruntime profiler",
        "runs": runs,
        "nodes_total": len(rows),
        "nodes": rows[:MAX_LISTED_NODES],
        "node_sum_us": total,  # the sum of the nodes' medians: what the shares divide
        "profiled_run_ms_p50": profiled,  # one whole inference with the profiler on
        "headline_ms_p50": headline_p50_ms,  # the timed rounds' p50, without the profiler
        # how much slower a profiled run is than the headline: the per-node figures are
        # from profiled runs
        "profiler_overhead": profiled / headline_p50_ms - 1.0
        if profiled and headline_p50_ms else None,
    }


def profile_layers(open_profiled: Callable[[str], Any], feeds: Dict[str, Any], runs: int,
                   headline_p50_ms: Optional[float]) -> Dict[str, Any]:
    """``runs`` profiled inferences (after one warm-up) in the session ``open_profiled(prefix)``
    opens with profiling written under ``prefix``; the file is deleted afterwards."""
    folder = tempfile.mkdtemp(prefix="hwnas-ort-layers-")
    try:
        session = open_profiled(os.path.join(folder, "layers"))
        run_ms: List[float] = []
        for index in range(runs + 1):
            begin = time.perf_counter()
            session.run(None, feeds)
            if index:
                run_ms.append((time.perf_counter() - begin) * 1e3)
        path = session.end_profiling()
        with open(path, "r") as handle:
            events = json.load(handle)
        del session
        nodes, counted = node_times(events)
        if not nodes or counted != runs:
            return {"error": "onnxruntime's profile recorded %d of %d runs and %d node events; "
                             "no per-node times from it" % (counted, runs, len(nodes))}
        return summarize(nodes, counted, run_ms, headline_p50_ms)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
