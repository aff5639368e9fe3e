"""onnxruntime-genai: generation (TTFT, prefill and decode tokens/s) of a model folder.

The model is a folder as onnxruntime-genai's model builder writes it (genai_config.json,
model.onnx, model.onnx.data, tokenizer files), sent as a model of several files (manifest.py)
whose ``model`` is the ONNX file; the runtime opens its folder with ``onnxruntime_genai.Model``
(imported here only). Before it does, the folder's configuration is checked like every model:
each file it names stays inside the folder, every ONNX file reads only the folder's files
(onnx_refs), and a custom-operator library (code) is refused.

The request's execution providers and intra/inter-op threads go into the model's
configuration (og.Config: providers appended, session_options overlaid). The timed loop is
generation.py's; ``run_once`` is one whole generation round.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from hwnas_agent import onnx_refs
from hwnas_agent.generation import Round, run_generation
from hwnas_agent.protocol import GENAI
from hwnas_agent.runtimes.base import LoadedModel, Runtime, RuntimeUnavailable

CONFIG_NAME = "genai_config.json"
INSTALL = "pip install 'hwnas-agent[genai]'"
# onnxruntime's provider names (the request's) -> onnxruntime-genai's
PROVIDERS = {"CPUExecutionProvider": None, "CUDAExecutionProvider": "cuda",
             "DmlExecutionProvider": "dml", "QNNExecutionProvider": "QNN",
             "OpenVINOExecutionProvider": "OpenVINO", "WebGpuExecutionProvider": "WebGPU",
             "NvTensorRTRTXExecutionProvider": "NvTensorRtRtx"}
# keys of a genai configuration that make onnxruntime load code or read what is not the model's
REFUSED_KEYS = ("custom_ops_library", "custom_ops_libraries", "ep_context_file_path")
# keys that name a file the runtime reads (decoder.filename, a processor's config_filename)
FILE_KEYS = ("filename", "_file", "_path")


class GenaiSettingError(ValueError):
    """A request's generation setting that this model cannot honour; names the key."""


def read_config(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(path):
        raise RuntimeUnavailable("runtime 'genai' opens an onnxruntime-genai model folder, and "
                                 "the model's folder has no %s (send the builder's whole output "
                                 "folder as a model of several files)" % CONFIG_NAME)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise RuntimeUnavailable("%s has no 'model' object" % CONFIG_NAME)
    return config


def check_config(config: Any, folder: str, where: str = "") -> None:
    """onnx_refs.ModelRefused for a configuration that loads code or names a file outside
    the folder (any key ending in filename, _file or _path); every ONNX file it names is
    checked for external data like the model."""
    if isinstance(config, dict):
        for key, value in config.items():
            here = "%s.%s" % (where, key) if where else key
            if key in REFUSED_KEYS:
                raise onnx_refs.ModelRefused("%s names %r (%s): the agent loads no code and no "
                                             "file from a model's configuration"
                                             % (CONFIG_NAME, here, value))
            if isinstance(value, str) and key.endswith(FILE_KEYS):
                _check_file(folder, value, here)
            else:
                check_config(value, folder, here)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_config(value, folder, "%s[%d]" % (where, index))


def _check_file(folder: str, name: str, where: str) -> None:
    root = os.path.realpath(folder)
    path = os.path.join(root, name)
    if os.path.isabs(name) or os.path.realpath(path) != os.path.normpath(path) \
            or not os.path.normpath(path).startswith(root + os.sep) or not os.path.isfile(path):
        raise onnx_refs.ModelRefused("%s: %s = %r is not a file of the model's folder"
                                     % (CONFIG_NAME, where, name))
    if name.endswith(".onnx"):
        files = [os.path.relpath(os.path.join(d, f), root)
                 for d, _, names in os.walk(root) for f in names]
        onnx_refs.check_external_data(path, data_files=files)


def prompt_ids(config: Dict[str, Any], count: int, seed: int) -> np.ndarray:
    """``count`` token ids drawn from the vocabulary (fixed seed), special tokens left out."""
    model = config["model"]
    special = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = model.get(key)
        special.update(value if isinstance(value, list) else [value])
    vocabulary = np.array([i for i in range(int(model["vocab_size"])) if i not in special])
    return np.random.default_rng(seed).choice(vocabulary, size=count).astype(np.int32)


class GenaiModel(LoadedModel):
    name = GENAI

    def __init__(self, og: Any, model: Any, config: Dict[str, Any], request: Any,
                 providers: List[str]) -> None:
        self._og = og
        self._model = model
        self._config = config
        self._request = request
        self._providers = providers
        self._prompt = prompt_ids(config, request.prompt_tokens, request.seed)
        self._length = request.prompt_tokens + request.generate_tokens
        self._params = og.GeneratorParams(model)
        self._params.set_search_options(do_sample=False, max_length=self._length,
                                        min_length=self._length, num_beams=1)
        self.inputs = [{"name": "input_ids", "shape": [1, request.prompt_tokens],
                        "dtype": "int32"}]

    def generation_round(self) -> Round:
        """One round: (TTFT ns, decode ns, decode start and end on the monotonic clock)."""
        generator = self._og.Generator(self._model, self._params)
        clock = time.perf_counter_ns
        begin = clock()
        generator.append_tokens(self._prompt)
        generator.generate_next_token()
        first = clock()
        decode_start = time.monotonic()
        produced = 1
        while produced < self._request.generate_tokens:
            if generator.is_done():
                raise RuntimeError("the generation stopped after %d of %d tokens"
                                   % (produced, self._request.generate_tokens))
            generator.generate_next_token()
            produced += 1
        end = clock()
        decode_end = time.monotonic()
        del generator
        return first - begin, end - first, decode_start, decode_end

    def run_once(self) -> None:
        self.generation_round()

    def timed_loop(self, request: Any, **hooks: Any) -> Dict[str, Any]:
        return run_generation(self.generation_round, request, **hooks)

    def node_assignment(self) -> Optional[Dict[str, Any]]:
        return None  # onnxruntime-genai does not say which node ran where

    def describe(self) -> Dict[str, Any]:
        model = self._config["model"]
        return {
            "name": self.name,
            "version": getattr(self._og, "__version__", "unknown"),
            "requested_execution_providers": list(self._request.execution_providers),
            # as configured: onnxruntime-genai does not report its sessions' providers
            "execution_providers": list(self._request.execution_providers),
            "genai_providers": self._providers,
            "device_type": str(getattr(self._model, "device_type", "")),
            "provider_options": list(self._request.provider_options),
            "intra_op_threads": self._request.intra_op_threads,
            "inter_op_threads": self._request.inter_op_threads,
            "model_type": str(getattr(self._model, "type", model.get("type", ""))),
            "context_length": model.get("context_length"),
            "vocab_size": model.get("vocab_size"),
            "prompt_tokens": self._request.prompt_tokens,
            "generate_tokens": self._request.generate_tokens,
            "node_assignment": None,
            "emulated": False,
        }


def session_overlay(request: Any) -> Optional[str]:
    """The decoder's session options the request sets (0 threads: the runtime's default)."""
    options = {}
    if request.intra_op_threads:
        options["intra_op_num_threads"] = request.intra_op_threads
    if request.inter_op_threads:
        options["inter_op_num_threads"] = request.inter_op_threads
    if not options:
        return None
    return json.dumps({"model": {"decoder": {"session_options": options}}})


class GenaiRuntime(Runtime):
    name = GENAI

    def available(self) -> Optional[str]:
        if importlib.util.find_spec("onnxruntime_genai") is None:
            return ("runtime 'genai' needs the onnxruntime-genai Python package, which is not "
                    "installed on this device (Python >= 3.10): %s" % INSTALL)
        return None

    def open(self, model_path: str, request: Any, cache_dir: Optional[str] = None
             ) -> GenaiModel:
        why = self.available()
        if why is not None:
            raise RuntimeUnavailable(why)
        folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
        config = read_config(folder)
        check_config(config, folder)
        context = config["model"].get("context_length")
        length = request.prompt_tokens + request.generate_tokens
        if isinstance(context, int) and length > context:
            raise GenaiSettingError(
                "prompt_tokens + generate_tokens = %d + %d = %d is more than the model's "
                "context_length %d (%s): lower generate_tokens or prompt_tokens"
                % (request.prompt_tokens, request.generate_tokens, length, context, CONFIG_NAME))
        if request.batch_size != 1:
            raise GenaiSettingError("runtime 'genai' measures batch_size 1 only, not %d"
                                    % request.batch_size)
        import onnxruntime_genai as og

        settings = og.Config(folder)
        settings.clear_providers()
        providers = []
        raw = list(request.provider_options)
        raw += [{}] * (len(request.execution_providers) - len(raw))
        for provider, options in zip(request.execution_providers, raw):
            if provider not in PROVIDERS:
                raise RuntimeUnavailable("execution provider %s has no onnxruntime-genai "
                                         "counterpart; known: %s" % (provider, ", ".join(PROVIDERS)))
            name = PROVIDERS[provider]
            if name is None:
                continue  # the CPU: genai's default when no provider is appended
            settings.append_provider(name)
            for key, value in sorted(options.items()):
                settings.set_provider_option(name, key, value)
            providers.append(name)
        overlay = session_overlay(request)
        if overlay is not None:
            settings.overlay(overlay)
        try:
            model = og.Model(settings)
        except Exception as exc:
            raise RuntimeUnavailable("onnxruntime-genai %s cannot open the model with %s: %s"
                                     % (og.__version__, ", ".join(providers) or "the CPU",
                                        exc)) from None
        return GenaiModel(og, model, config, request, providers or ["cpu"])


RUNTIME = GenaiRuntime()
