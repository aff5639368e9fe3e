"""ONNX Runtime with any execution-provider list from the request.

Execution providers come in two forms: built into the onnxruntime package (CPU, CUDA,
TensorRT, an onnxruntime built with QNN, ...) or as a plugin library registered at run time
(``onnxruntime-qnn`` ships the QNN HTP backend that way). A requested provider that the
package lacks is looked for among the known plugin packages and registered once per process.

The result says which node ran where: a provider list is a wish, and an accelerator that
quietly hands nodes back to the CPU measures the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from hwnas_agent.runtimes import RuntimeUnavailable

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(bool)": np.bool_,
}
# provider -> the pip package that ships it as a plugin library (and its library getter)
PLUGIN_PACKAGES = {"QNNExecutionProvider": "onnxruntime_qnn"}
QNN = "QNNExecutionProvider"
# QNN backends by library name, for reading what a provider option asks for
_QNN_BACKENDS = {"libQnnHtp.so": "htp", "QnnHtp.dll": "htp", "libQnnCpu.so": "cpu",
                 "QnnCpu.dll": "cpu", "libQnnGpu.so": "gpu", "QnnGpu.dll": "gpu"}
# architectures whose QNN HTP backend is the real NPU; elsewhere it is Qualcomm's simulator
_NPU_MACHINES = ("aarch64", "arm64", "ARM64")
MAX_LISTED_NODES = 200
_registered: Dict[str, str] = {}  # provider -> library path registered in this process


def _optimization_level(ort: Any, name: str) -> Any:
    levels = ort.GraphOptimizationLevel
    return {
        "disable": levels.ORT_DISABLE_ALL,
        "basic": levels.ORT_ENABLE_BASIC,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "all": levels.ORT_ENABLE_ALL,
    }[name]


def make_feeds_for_shapes(specs: Dict[str, Any], seed: int) -> Dict[str, np.ndarray]:
    """name -> (shape, numpy dtype): deterministic random floats, zero integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in specs.items():
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def input_specs(session_inputs: List[Any], batch_size: int) -> Dict[str, Any]:
    """name -> (shape, numpy dtype); the first dynamic dimension is the batch."""
    specs = {}
    for meta in session_inputs:
        dtype = _NUMPY_TYPES.get(meta.type)
        if dtype is None:
            raise RuntimeUnavailable("input %r has type %s, which the agent cannot feed" % (
                meta.name, meta.type))
        shape = []
        for position, dim in enumerate(meta.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif position == 0:
                shape.append(batch_size)
            else:
                raise RuntimeUnavailable(
                    "input %r has a dynamic dimension %r at position %d; export the model with "
                    "static shapes except the batch" % (meta.name, dim, position))
        specs[meta.name] = (shape, dtype)
    return specs


def make_inputs(session_inputs: List[Any], batch_size: int, seed: int) -> Dict[str, np.ndarray]:
    """Deterministic random inputs; the first dynamic dimension is the batch."""
    return make_feeds_for_shapes(input_specs(session_inputs, batch_size), seed)


# --- providers: built in or plugin ------------------------------------------------------------


def _plugin_library(provider: str) -> Optional[Tuple[str, str]]:
    """(library path, package version) of the plugin package for ``provider``, if installed."""
    package = PLUGIN_PACKAGES.get(provider)
    if package is None:
        return None
    try:
        module = __import__(package)
    except ImportError:
        return None
    return module.get_library_path(), getattr(module, "__version__", "?")


def _register_plugin(ort: Any, provider: str) -> bool:
    if provider in _registered:
        return True
    found = _plugin_library(provider)
    if found is None or not hasattr(ort, "register_execution_provider_library"):
        return False
    ort.register_execution_provider_library(provider, found[0])
    _registered[provider] = found[0]
    return True


def available_providers() -> List[str]:
    """Built-in providers, then installed plugin providers (named as sessions take them)."""
    import onnxruntime as ort

    names = list(ort.get_available_providers())
    for provider in PLUGIN_PACKAGES:
        if provider not in names and _plugin_library(provider) is not None \
                and hasattr(ort, "register_execution_provider_library"):
            names.append(provider)
    return names


def plugin_versions() -> Dict[str, str]:
    """Installed plugin packages and their versions, for the device's facts."""
    found = {}
    for provider, package in PLUGIN_PACKAGES.items():
        library = _plugin_library(provider)
        if library is not None:
            found[package] = library[1]
    return found


def _resolve_options(provider: str, options: Dict[str, str], plugin: bool) -> Dict[str, str]:
    """A bare QNN backend library name means the one shipped beside the plugin."""
    resolved = {k: str(v) for k, v in options.items()}
    backend = resolved.get("backend_path")
    if plugin and provider == QNN and backend and os.path.basename(backend) == backend:
        directory = os.path.dirname(_registered[provider])
        if os.path.exists(os.path.join(directory, backend)):
            resolved["backend_path"] = os.path.join(directory, backend)
    return resolved


def qnn_backend(options: Dict[str, str]) -> str:
    """htp | cpu | gpu | ... from backend_type or backend_path (QNN's default is cpu)."""
    if options.get("backend_type"):
        return options["backend_type"].lower()
    path = options.get("backend_path", "")
    return _QNN_BACKENDS.get(os.path.basename(path), "cpu" if not path else path)


def emulation(providers: List[str], options: List[Dict[str, str]],
              machine: Optional[str] = None) -> Optional[str]:
    """Why a latency from these providers is not a device latency, or None when it is.
    Qualcomm's HTP backend on anything but an ARM machine is its x86 simulator."""
    machine = machine or platform.machine()
    for provider, provider_options in zip(providers, options):
        if provider == QNN and qnn_backend(provider_options) == "htp" \
                and machine not in _NPU_MACHINES:
            return ("QNN HTP backend simulated on %s: the latency is the simulator's, not the "
                    "NPU's; use it for compatibility and output fidelity only" % machine)
    return None


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


def _rejection_reasons(log_text: str) -> Dict[str, str]:
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


class SessionPlan:
    """How to open a session for a request: options, providers, plugin or built in."""

    def __init__(self, ort: Any, request: Any, model_path: str) -> None:
        self.ort = ort
        self.request = request
        self.model_path = model_path
        # a registered plugin shows in get_available_providers() too, but only opens through
        # its devices: passed by name in a provider list, onnxruntime silently uses the CPU
        builtin = set(ort.get_available_providers()) - set(_registered)
        self.plugin = [p for p in request.execution_providers
                       if p not in builtin and p in PLUGIN_PACKAGES]
        for provider in self.plugin:
            if not _register_plugin(ort, provider):
                raise RuntimeUnavailable(
                    "execution provider %s is neither built into onnxruntime %s nor installed as "
                    "a plugin (pip install %s)" % (provider, ort.__version__,
                                                   PLUGIN_PACKAGES[provider].replace("_", "-")))
        missing = [p for p in request.execution_providers
                   if p not in builtin and p not in self.plugin]
        if missing:
            raise RuntimeUnavailable(
                "execution provider(s) %s not available on this device; available: %s"
                % (", ".join(missing), ", ".join(available_providers())))
        raw = list(request.provider_options)
        raw += [{}] * (len(request.execution_providers) - len(raw))
        self.options = [_resolve_options(p, o, p in self.plugin)
                        for p, o in zip(request.execution_providers, raw)]
        self.static_batch = self._static_batch()

    def _static_batch(self) -> Dict[str, int]:
        """The HTP compiles static graphs: fix the batch dimension by name at load time (the
        bytes stay the ones the controller sent)."""
        if QNN not in self.request.execution_providers:
            return {}
        probe = self.ort.InferenceSession(self.model_path, providers=["CPUExecutionProvider"])
        names = {}
        for meta in probe.get_inputs():
            if meta.shape and isinstance(meta.shape[0], str):
                names[meta.shape[0]] = self.request.batch_size
        return names

    def session_options(self, fallback: bool, verbose: bool = False) -> Any:
        ort, request = self.ort, self.request
        options = ort.SessionOptions()
        options.intra_op_num_threads = request.intra_op_threads
        options.inter_op_num_threads = request.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = _optimization_level(ort, request.graph_optimization)
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "0" if fallback else "1")
        # onnxruntime >= 1.23 records which provider took each node (ignored before)
        options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        for name, size in self.static_batch.items():
            options.add_free_dimension_override_by_name(name, size)
        if verbose:
            options.log_severity_level = 0
        if self.plugin:
            devices = self.ort.get_ep_devices()
            for provider, provider_options in zip(request.execution_providers, self.options):
                chosen = [d for d in devices if d.ep_name == provider]
                if chosen:
                    options.add_provider_for_devices(chosen, dict(provider_options))
        return options

    def open(self, fallback: bool, verbose: bool = False) -> Any:
        options = self.session_options(fallback, verbose)
        if self.plugin:
            return self.ort.InferenceSession(self.model_path, sess_options=options)
        return self.ort.InferenceSession(self.model_path, sess_options=options,
                                         providers=list(self.request.execution_providers),
                                         provider_options=list(self.options))


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


def _profiled_assignment(plan: SessionPlan) -> Optional[Dict[str, Any]]:
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


def _assignment_with_reasons(plan: SessionPlan) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """A session with fallback allowed and verbose logs: which nodes leave the first
    provider, and the provider's reason for each."""
    handle, log_path = tempfile.mkstemp(prefix="hwnas-ort-", suffix=".log")
    os.close(handle)
    try:
        with _stderr_to(log_path):
            session = plan.open(fallback=True, verbose=True)
        with open(log_path, "r", errors="replace") as log:
            reasons = _rejection_reasons(log.read())
    finally:
        os.unlink(log_path)
    assignment = node_assignment(session, plan.request.execution_providers[0])
    if assignment is None:
        assignment = _profiled_assignment(plan)
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


class OnnxRuntimeModel:
    def __init__(self, session: Any, feeds: Dict[str, np.ndarray], request: Any, version: str,
                 plan: SessionPlan, assignment: Optional[Dict[str, Any]]) -> None:
        self._session = session
        self._feeds = feeds
        self._request = request
        self._version = version
        self._plan = plan
        self._assignment = assignment
        self.inputs = [
            {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
            for name, array in feeds.items()
        ]

    def run_once(self) -> None:
        self._session.run(None, self._feeds)

    def describe(self) -> Dict[str, Any]:
        why = emulation(list(self._request.execution_providers), self._plan.options)
        return {
            "name": "onnxruntime",
            "version": self._version,
            "requested_execution_providers": list(self._request.execution_providers),
            "execution_providers": self._session.get_providers(),
            "plugin_execution_providers": {p: _registered[p] for p in self._plan.plugin},
            "provider_options": self._plan.options,
            "disable_cpu_fallback": self._request.disable_cpu_fallback,
            "intra_op_threads": self._request.intra_op_threads,
            "inter_op_threads": self._request.inter_op_threads,
            "graph_optimization": self._request.graph_optimization,
            "static_batch": dict(self._plan.static_batch),
            "node_assignment": self._assignment,
            "emulated": why is not None,
            "emulation": why,
        }


def open_session(model_path: str, request: Any) -> Tuple[Any, SessionPlan, Optional[Dict[str, Any]]]:
    """The session the request asks for, its plan, and which node went to which provider.

    With CPU fallback disabled, a graph the accelerator cannot take whole fails here, naming
    the nodes it refused and why (from a second, fallback-allowed and verbose load)."""
    import onnxruntime as ort

    plan = SessionPlan(ort, request, model_path)
    first = request.execution_providers[0]
    try:
        session = plan.open(fallback=not request.disable_cpu_fallback)
    except Exception as exc:
        if not request.disable_cpu_fallback or first == "CPUExecutionProvider":
            raise
        try:
            _, assignment = _assignment_with_reasons(plan)
        except Exception:
            raise exc from None
        if not assignment or not assignment["elsewhere"]:
            raise
        raise RuntimeUnavailable(
            "%s cannot run the whole graph and CPU fallback is disabled: %d node(s) would run "
            "elsewhere: %s" % (first, assignment["elsewhere_total"],
                               describe_nodes(assignment["elsewhere"]))) from None
    assignment = node_assignment(session, first)
    if assignment is None and first != "CPUExecutionProvider":
        assignment = _profiled_assignment(plan)
    if assignment is not None and assignment["elsewhere"] and first != "CPUExecutionProvider":
        # the fallback is allowed and was used: say why each node left the accelerator
        _, assignment = _assignment_with_reasons(plan)
    return session, plan, assignment


def load(model_path: str, request: Any) -> OnnxRuntimeModel:
    import onnxruntime as ort

    session, plan, assignment = open_session(model_path, request)
    feeds = make_inputs(session.get_inputs(), request.batch_size, request.seed)
    return OnnxRuntimeModel(session, feeds, request, ort.__version__, plan, assignment)


def inspect(model_path: str) -> Dict[str, Any]:
    """Load on the CPU to prove the bytes are a usable model; report its signature."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return {
        "inputs": [{"name": i.name, "shape": [d if isinstance(d, int) else str(d) for d in i.shape],
                    "type": i.type} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": [d if isinstance(d, int) else str(d) for d in o.shape],
                     "type": o.type} for o in session.get_outputs()],
    }

