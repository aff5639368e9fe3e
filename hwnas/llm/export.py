"""A transformers causal LM in memory (pruned or not) -> an onnxruntime-genai model folder.

API::

    plan = PrecisionPlan.uniform("int4", block_size=32)            # every layer and lm_head
    plan = PrecisionPlan.uniform("int8", block_size=128).with_layers(
        [0, 1], attention=Weight("int4", 32), mlp=Weight("int4", 32))
    done = export_genai(model, tokenizer, out_dir, plan, threads=None)  # -> ExportedFolder
    onnxruntime_genai.Model(str(done.path))                         # loads the folder as is

The folder holds ``model.onnx`` + ``model.onnx.data`` (weights as external data),
``genai_config.json`` and the tokenizer files. ``ExportedFolder`` records each file's sha256,
the total bytes (``model_size_mb``), what every weighted node became (read back from the
written graph), the plan, the seconds taken and the builder's/onnxruntime's versions.

How: onnxruntime-genai's model builder (``onnxruntime_genai.models.builder``) writes an fp32
graph, fed the model IN MEMORY (its ``load_weights`` would reload the folder with
``from_pretrained``, which cannot hold per-layer MLP widths: one ``intermediate_size``), with
the builder's intermediate size set per layer from the layer's own ``down_proj``. Then
``hwnas.llm.quantize`` gives each node its precision. A plan (``hwnas.llm.plan``, its names
handed on here) has, per decoder layer (as exported: after any dropped layers), one precision
for the attention matmuls (qkv, o) and one for the MLP matmuls (gate, up, down), and
separately the embedding and the lm_head. Kinds: ``fp32``, ``fp16`` (weights stored float16,
computed float32 on the CPU), ``int8``, ``int4`` (blockwise along the input dimension K,
block 32/64/128, a block that does not divide K zero-padded by the quantizer; symmetric by
default; ``accuracy_level`` is MatMulNBits': 4 lets the CPU compute with int8 activations,
the builder's own CPU default). The embedding takes fp32/fp16/int4 (GatherBlockQuantized is
4-bit only). Tied embeddings (the builder writes the embedding as the lm_head's weight
transposed) stay one tensor while both ends are fp32, share the lm_head's fp16 weight when
both are fp16 and its int4 weight when both are the same symmetric int4 (as the builder's
own int4 export does), and are split into two tensors otherwise: embedding and lm_head are
separate choices.

Refused before any work (``ExportError``): an architecture the builder path here does not
handle (named, with the supported ones), query/key-value head counts that differ between
layers (the builder writes one GroupQueryAttention head count for every layer), layer counts
or MLP shapes that disagree with the config or with themselves, an unknown kind or block
size, a plan naming layers the model does not have, an int8 embedding, an int4 embedding
whose hidden size the block does not divide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hwnas.errors import ExportError
from hwnas.llm.plan import BLOCK_SIZES, KINDS, LayerPlan, PrecisionPlan, Weight

__all__ = ["BLOCK_SIZES", "KINDS", "BUILDERS", "ExportedFolder", "LayerPlan", "PrecisionPlan",
           "Weight", "check_exportable", "export_genai"]

# config.architectures[0] -> the builder class create_model picks for it (builder.py)
BUILDERS = {"LlamaForCausalLM": "LlamaModel", "Qwen2ForCausalLM": "QwenModel",
            "GemmaForCausalLM": "GemmaModel"}
_LOG_TAIL = 4000
# the builder class is patched and stdout redirected while it runs: one export at a time
_BUILDER_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class ExportedFolder:
    """What ``export_genai`` wrote: files (name -> sha256), sizes, precisions as written."""

    path: Path
    files: dict[str, str]
    total_bytes: int
    applied: dict[str, str]  # builder node name -> fp32 | fp16 | int4/32 | int8/128 ...
    plan: dict[str, Any]
    versions: dict[str, str]
    seconds: float

    @property
    def model_size_mb(self) -> float:
        return self.total_bytes / 1e6

    def as_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record["path"] = str(self.path)
        record["model_size_mb"] = self.model_size_mb
        return record


def _decoder_layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ExportError(f"{type(model).__name__} has no model.layers: not a decoder hwnas "
                          f"exports")
    return list(layers)


def architecture(model: Any) -> str:
    """The name the builder dispatches on (config.architectures[0], else the class name)."""
    names = getattr(model.config, "architectures", None) or [type(model).__name__]
    return names[0]


def check_exportable(model: Any, tokenizer: Any, plan: PrecisionPlan, out_dir: Path) -> None:
    """Everything ``export_genai`` refuses, found before any work (see the module docstring)."""
    name = architecture(model)
    if not hasattr(tokenizer, "save_pretrained"):
        raise ExportError("a transformers tokenizer is needed: its files go into the folder "
                          "for onnxruntime-genai")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ExportError("move the model to the CPU first (model.cpu()): the builder reads "
                          "its weights there")
    if name not in BUILDERS:
        raise ExportError(f"architecture {name} cannot be exported to onnxruntime-genai here; "
                          f"supported: {', '.join(BUILDERS)}")
    config = model.config
    layers = _decoder_layers(model)
    if len(layers) != config.num_hidden_layers:
        raise ExportError(f"the model has {len(layers)} decoder layers but "
                          f"config.num_hidden_layers is {config.num_hidden_layers}: update the "
                          f"config after dropping layers")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads = [(layer.self_attn.q_proj.out_features // head_dim,
              layer.self_attn.k_proj.out_features // head_dim) for layer in layers]
    expected = (config.num_attention_heads, config.num_key_value_heads)
    uneven = {i: h for i, h in enumerate(heads) if h != expected}
    if uneven:
        shown = "; ".join(f"layer {i}: {q} query / {kv} key-value heads"
                          for i, (q, kv) in uneven.items())
        raise ExportError(f"head counts differ between layers ({shown}; the config says "
                          f"{expected[0]} / {expected[1]}): the builder writes one "
                          f"GroupQueryAttention head count for every layer, so heads must be "
                          f"removed uniformly")
    if config.num_attention_heads % config.num_key_value_heads:
        raise ExportError(f"{config.num_attention_heads} query heads do not split into "
                          f"{config.num_key_value_heads} key-value groups")
    for index, layer in enumerate(layers):
        mlp = layer.mlp
        widths = {mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features}
        if len(widths) != 1:
            raise ExportError(f"layer {index}: gate/up outputs and down inputs disagree "
                              f"{sorted(widths)}")
    wrong = sorted(i for i in plan.layers if not 0 <= i < len(layers))
    if wrong:
        raise ExportError(f"the plan names layers {wrong}; the model has layers "
                          f"0-{len(layers) - 1}")
    if plan.embedding.kind == "int8":
        raise ExportError("an int8 embedding cannot be written (onnxruntime's GatherBlockQuantized "
                          "is 4-bit only): choose fp32, fp16 or int4")
    if plan.embedding.kind == "int4" and config.hidden_size % plan.embedding.block_size:
        raise ExportError(f"int4 embedding blocks of {plan.embedding.block_size} do not divide "
                          f"hidden size {config.hidden_size}")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "genai_config.json").exists():
        # an earlier export is replaced; any other folder is not ours to empty
        raise ExportError(f"{out_dir} holds files and no genai_config.json: not an earlier "
                          f"export, so it is left alone; choose an empty or new folder")


def _builder_input(model: Any, tokenizer: Any, folder: Path) -> None:
    """config.json + tokenizer files the builder reads (its hf_details); no weights."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.architectures = [architecture(model)]
    # only the builder's default; each layer's own width is set while its MLP is written
    config.intermediate_size = max(layer.mlp.down_proj.in_features
                                   for layer in _decoder_layers(model))
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def _in_memory(builder_class: type, model: Any) -> Any:
    """The builder class loads ``model`` instead of reading the folder, and writes each MLP
    with that layer's own intermediate size (used in its value_info shapes)."""
    original_mlp = builder_class.make_mlp

    def make_mlp(self: Any, layer_id: int, mlp: Any, root_input: str) -> Any:
        self.intermediate_size = mlp.down_proj.in_features
        return original_mlp(self, layer_id, mlp, root_input)

    had_load = "load_weights" in builder_class.__dict__
    had_mlp = "make_mlp" in builder_class.__dict__
    saved_load = builder_class.__dict__.get("load_weights")
    builder_class.load_weights = lambda self, input_path: model
    builder_class.make_mlp = make_mlp
    try:
        yield
    finally:
        for attr, had, saved in (("load_weights", had_load, saved_load),
                                 ("make_mlp", had_mlp, original_mlp)):
            if had:
                setattr(builder_class, attr, saved)
            else:
                delattr(builder_class, attr)


def _run_builder(model: Any, tokenizer: Any, out_dir: Path, work: Path) -> None:
    import onnxruntime_genai.models.builder as builder
    import torch

    hf = work / "hf"
    _builder_input(model, tokenizer, hf)
    builder_class = getattr(builder, BUILDERS[architecture(model)])
    log = io.StringIO()
    try:
        # the builder prints hundreds of lines (progress bars, every tensor saved)
        with _BUILDER_LOCK, _in_memory(builder_class, model), torch.no_grad(), \
                contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            options = builder.parse_extra_options(None, str(hf), str(out_dir), "fp32", "cpu",
                                                  str(work / "cache"), ["hf_remote=false"])
            builder.create_model(None, str(hf), str(out_dir), "fp32", "cpu", str(work / "cache"),
                                 **options)
    except Exception as error:  # the builder raises bare Exceptions; keep its last words
        raise ExportError(f"the onnxruntime-genai model builder failed: {error}\n"
                          f"{log.getvalue()[-_LOG_TAIL:]}") from error


def _write(model: Any, path: Path) -> None:
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing external-data file
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=data.name, size_threshold=1024)


def _set_threads(out_dir: Path, threads: int | None) -> None:
    if threads is None:
        return
    path = out_dir / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    path.write_text(json.dumps(config, indent=4))


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxruntime_genai
    import transformers

    return {"onnxruntime-genai": onnxruntime_genai.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}


def export_genai(model: Any, tokenizer: Any, out_dir: Path | str, plan: PrecisionPlan,
                 threads: int | None = None) -> ExportedFolder:
    """Write ``model`` (a transformers causal LM, on the CPU) as an onnxruntime-genai folder
    at ``out_dir`` (new, empty, or an earlier export, which is replaced) with ``plan``'s
    precisions. ``threads``: the intra-op threads written into genai_config.json's session
    options (the runtime's default if None)."""
    out_dir = Path(out_dir)
    check_exportable(model, tokenizer, plan, out_dir)
    started = time.perf_counter()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        applied = _build(model, tokenizer, out_dir, plan)
    except BaseException:
        # a half-written folder (the builder's fp32 graph, not yet quantized) would load and
        # run as if it were the plan's: nothing is left behind
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    _set_threads(out_dir, threads)
    files = {p.name: file_sha256(p) for p in sorted(out_dir.iterdir()) if p.is_file()}
    total = sum((out_dir / name).stat().st_size for name in files)
    return ExportedFolder(out_dir, files, total, applied, plan.as_dict(), versions(),
                          time.perf_counter() - started)


def _build(model: Any, tokenizer: Any, out_dir: Path, plan: PrecisionPlan) -> dict[str, str]:
    """The builder's fp32 folder, then the plan's precisions; what each node became."""
    import onnx

    from hwnas.llm.quantize import (EMBEDDING, applied_precisions, apply_precisions, is_tied,
                                    share_quantized_tie, untie_embedding, weighted_nodes)

    with tempfile.TemporaryDirectory(prefix="hwnas-genai-", dir=out_dir.parent) as scratch:
        _run_builder(model, tokenizer, out_dir, Path(scratch))
    graph_path = out_dir / "model.onnx"
    graph = onnx.load(str(graph_path), load_external_data=False)
    parts = weighted_nodes(graph)
    chosen = {name: (plan.for_part(part).kind, plan.for_part(part).block_size)
              for name, part in parts.items()}
    if any(kind != "fp32" for kind, _ in chosen.values()):
        graph = onnx.load(str(graph_path))
        # a tie stays one tensor while both ends take the same fp32, fp16 or symmetric int4
        share = (is_tied(graph) and plan.embedding == plan.lm_head
                 and (plan.embedding.kind in ("fp32", "fp16") or plan.symmetric))
        if share:
            del chosen[EMBEDDING]  # it reads the lm_head's weight (through its Cast if fp16)
        elif {plan.embedding.kind, plan.lm_head.kind} != {"fp32"}:
            untie_embedding(graph)
        graph = apply_precisions(graph, chosen, plan.symmetric, plan.accuracy_level)
        if share and plan.embedding.kind == "int4":
            share_quantized_tie(graph, plan.embedding.block_size)
        _write(graph, graph_path)
        graph = onnx.load(str(graph_path), load_external_data=False)
    applied = {name: kind for name, kind in applied_precisions(graph).items() if name in parts}
    # the quantizer skips what it cannot take (a non-2D weight) with a log line only: what the
    # graph holds is checked against the plan, node by node
    wrong = [f"{name}: {applied.get(name, 'missing')} (planned {plan.for_part(part).label})"
             for name, part in parts.items() if applied.get(name) != plan.for_part(part).label]
    if wrong:
        raise ExportError(f"the written graph differs from the plan: {'; '.join(wrong[:5])}")
    return applied
