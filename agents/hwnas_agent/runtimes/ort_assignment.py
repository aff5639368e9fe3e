"""Which node ran on which execution provider, and why a provider refused a node: a provider
list is a wish, and an accelerator that quietly hands nodes back to the CPU measures the CPU.

From onnxruntime's own record (1.23+), else from a profiled run (any version); the reasons
come from the provider's verbose log.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from hwnas_agent.runtimes.feeds import make_inputs

MAX_LISTED_NODES = 200


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Native code logs to file descriptor 2: catch it (the worker is its own process)."""
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def rejection_reasons(log_text: str) -> Dict[str, str]:
    """Node name -> why an EP refused it, from onnxruntime's verbose log. The QNN EP writes
    'Validation FAILED for N nodes in OrtNodeUnit (Op) :', one 'Operator type: X Node name: Y
    Node index: I' line per node of the unit, then 'REASON : ...' (PASSED units: no reason)."""
    reasons: Dict[str, str] = {}
    pending: List[str] = []
    failed = False
    for line in log_text.splitlines():
        line = line.strip()
        if "Validation FAILED" in line or "Validation PASSED" in line:
            failed, pending = "Validation FAILED" in line, []
        elif failed and line.startswith("Operator type:") and "Node name:" in line:
            pending.append(line.split("Node name:", 1)[1].split(" Node index:")[0].strip())
        elif failed and line.startswith("REASON") and pending:
            reason = line.split(":", 1)[1].strip() if ":" in line else line
            for name in pending:
                reasons.setdefault(name, reason)
            failed, pending = False, []
    return reasons


def node_assignment(session: Any, first_provider: str) -> Optional[Dict[str, Any]]:
    """Which provider took each node: counts per provider, and the nodes not on the first
    (requested) provider. None where onnxruntime cannot say (before 1.23)."""
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return None
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception:  # recording not supported by this build
        return None
    counts: Dict[str, int] = {}
    elsewhere: List[Dict[str, str]] = []
    for subgraph in subgraphs:
        nodes = subgraph.get_nodes()
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(nodes)
        if subgraph.ep_name != first_provider:
            elsewhere += [{"name": n.name, "op_type": n.op_type, "provider": subgraph.ep_name}
                          for n in nodes]
    return {"counts": counts, "elsewhere": elsewhere[:MAX_LISTED_NODES],
            "elsewhere_total": len(elsewhere)}


def assignment_from_profile(profile_path: str, first_provider: str) -> Dict[str, Any]:
    """The same summary from an onnxruntime profile (any version): one 'Node' event per
    kernel run, with the provider that ran it; a subgraph an accelerator compiled appears as
    its one fused node."""
    with open(profile_path, "r") as handle:
        events = json.load(handle)
    seen: Dict[str, Dict[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        name = event.get("name", "")
        if name.endswith("_kernel_time"):
            name = name[:-len("_kernel_time")]
        seen.setdefault(name, {"name": name, "op_type": args.get("op_name", "?"),
                               "provider": args["provider"]})
    counts: Dict[str, int] = {}
    for node in seen.values():
        counts[node["provider"]] = counts.get(node["provider"], 0) + 1
    elsewhere = [n for n in seen.values() if n["provider"] != first_provider]
    return {"counts": counts, "elsewhere": elsewhere[:MAX_LISTED_NODES],
            "elsewhere_total": len(elsewhere), "source": "profiling (fused subgraphs count once)"}


def profiled_assignment(plan: Any) -> Optional[Dict[str, Any]]:
    """For onnxruntime before 1.23: run once with profiling on and read the profile."""
    options = plan.session_options(fallback=True)
    folder = tempfile.mkdtemp(prefix="hwnas-ort-profile-")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(folder, "profile")
    try:
        if plan.plugin:
            session = plan.ort.InferenceSession(plan.model_path, sess_options=options)
        else:
            session = plan.ort.InferenceSession(
                plan.model_path, sess_options=options,
                providers=list(plan.request.execution_providers), provider_options=list(plan.options))
        session.run(None, make_inputs(session.get_inputs(), plan.request.batch_size, 0))
        return assignment_from_profile(session.end_profiling(), plan.request.execution_providers[0])
    except Exception:  # profiling unsupported by this build: say nothing rather than guess
        return None
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def assignment_with_reasons(plan: Any) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """A session with fallback allowed and verbose logs: which nodes leave the first
    provider, and the provider's reason for each."""
    handle, log_path = tempfile.mkstemp(prefix="hwnas-ort-", suffix=".log")
    os.close(handle)
    try:
        with _stderr_to(log_path):
            session = plan.open(fallback=True, verbose=True)
        with open(log_path, "r", errors="replace") as log:
            reasons = rejection_reasons(log.read())
    finally:
        os.unlink(log_path)
    assignment = node_assignment(session, plan.request.execution_providers[0])
    if assignment is None:
        assignment = profiled_assignment(plan)
    if assignment is not None:
        for node in assignment["elsewhere"]:
            if node["name"] in reasons:
                node["reason"] = reasons[node["name"]]
    return session, assignment


def describe_nodes(nodes: List[Dict[str, str]], limit: int = 8) -> str:
    parts = ["%s '%s'%s" % (n["op_type"], n["name"], " (%s)" % n["reason"] if n.get("reason") else "")
             for n in nodes[:limit]]
    more = len(nodes) - limit
    return ", ".join(parts) + (" and %d more" % more if more > 0 else "")
