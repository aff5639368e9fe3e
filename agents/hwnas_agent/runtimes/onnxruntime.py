"""ONNX Runtime with any execution-provider list from the request.

Execution providers come in two forms: built into the onnxruntime package (CPU, CUDA,
TensorRT, an onnxruntime built with QNN, ...) or as a plugin library registered at run time
(``onnxruntime-qnn`` ships the QNN HTP backend that way). A requested provider that the
package lacks is looked for among the known plugin packages and registered once per process.

The result says which node ran where: a provider list is a wish, and an accelerator that
quietly hands nodes back to the CPU measures the CPU. Providers and plugins: ort_providers.py;
node assignment and refusal reasons: ort_assignment.py; per-node time (a layer profile,
after the timed rounds): ort_layers.py; inputs: feeds.py.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Dict, Optional, Tuple

import numpy as np

from hwnas_agent.protocol import ONNXRUNTIME
from hwnas_agent.runtimes.base import LoadedModel, Runtime, RuntimeUnavailable
from hwnas_agent.runtimes.feeds import make_inputs
from hwnas_agent.runtimes.ort_assignment import (assignment_with_reasons, describe_nodes,
                                                 node_assignment, profiled_assignment)
from hwnas_agent.runtimes.ort_layers import profile_layers
from hwnas_agent.runtimes.ort_providers import (PLUGIN_PACKAGES, QNN, available_providers,
                                                emulation, register_plugin, registered,
                                                resolve_options)

def _optimization_level(ort: Any, name: str) -> Any:
    levels = ort.GraphOptimizationLevel
    return {
        "disable": levels.ORT_DISABLE_ALL,
        "basic": levels.ORT_ENABLE_BASIC,
        "extended": levels.ORT_ENABLE_EXTENDED,
        "all": levels.ORT_ENABLE_ALL,
    }[name]



class SessionPlan:
    """How to open a session for a request: options, providers, plugin or built in."""

    def __init__(self, ort: Any, request: Any, model_path: str) -> None:
        self.ort = ort
        self.request = request
        self.model_path = model_path
        # a registered plugin shows in get_available_providers() too, but only opens through
        # its devices: passed by name in a provider list, onnxruntime silently uses the CPU
        builtin = set(ort.get_available_providers()) - set(registered)
        self.plugin = [p for p in request.execution_providers
                       if p not in builtin and p in PLUGIN_PACKAGES]
        for provider in self.plugin:
            if not register_plugin(ort, provider):
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
        self.options = [resolve_options(p, o, p in self.plugin)
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

    def session_options(self, fallback: bool, verbose: bool = False,
                        profile_prefix: Optional[str] = None) -> Any:
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
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        if self.plugin:
            devices = self.ort.get_ep_devices()
            for provider, provider_options in zip(request.execution_providers, self.options):
                chosen = [d for d in devices if d.ep_name == provider]
                if chosen:
                    options.add_provider_for_devices(chosen, dict(provider_options))
        return options

    def open(self, fallback: bool, verbose: bool = False,
             profile_prefix: Optional[str] = None) -> Any:
        options = self.session_options(fallback, verbose, profile_prefix)
        if self.plugin:
            return self.ort.InferenceSession(self.model_path, sess_options=options)
        return self.ort.InferenceSession(self.model_path, sess_options=options,
                                         providers=list(self.request.execution_providers),
                                         provider_options=list(self.options))


class OnnxRuntimeModel(LoadedModel):
    name = ONNXRUNTIME

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

    def node_assignment(self) -> Optional[Dict[str, Any]]:
        return self._assignment

    def layer_profile(self, runs: int, headline_p50_ms: Optional[float]) -> Dict[str, Any]:
        fallback = not self._request.disable_cpu_fallback
        return profile_layers(lambda prefix: self._plan.open(fallback, profile_prefix=prefix),
                              self._feeds, runs, headline_p50_ms)

    def describe(self) -> Dict[str, Any]:
        why = emulation(list(self._request.execution_providers), self._plan.options)
        return {
            "name": self.name,
            "version": self._version,
            "requested_execution_providers": list(self._request.execution_providers),
            "execution_providers": self._session.get_providers(),
            "plugin_execution_providers": {p: registered[p] for p in self._plan.plugin},
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
            _, assignment = assignment_with_reasons(plan)
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
        assignment = profiled_assignment(plan)
    if assignment is not None and assignment["elsewhere"] and first != "CPUExecutionProvider":
        # the fallback is allowed and was used: say why each node left the accelerator
        _, assignment = assignment_with_reasons(plan)
    return session, plan, assignment


class OnnxRuntime(Runtime):
    name = ONNXRUNTIME

    def available(self) -> Optional[str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return "runtime 'onnxruntime' needs the onnxruntime Python package"
        return None

    def open(self, model_path: str, request: Any, cache_dir: Optional[str] = None
             ) -> OnnxRuntimeModel:
        import onnxruntime as ort

        session, plan, assignment = open_session(model_path, request)
        feeds = make_inputs(session.get_inputs(), request.batch_size, request.seed)
        return OnnxRuntimeModel(session, feeds, request, ort.__version__, plan, assignment)


RUNTIME = OnnxRuntime()


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

