"""A pruned, fine-tuned PyTorch model as files: its state_dict and the channel plan that
rebuilds its architecture from the base model.

    <name>.pt          torch.save(state_dict): tensors only, loaded with weights_only=True
    <name>.plan.json   how to build the base model (builtin, factory or torchvision, kwargs,
                       input shape, classes) and torch-pruning's history of each pruning step

``load_pruned(plan)`` builds the base model, replays the plan and loads the weights: nothing
is unpickled but tensors, and no code travels in the files (a factory must be importable).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from hwnas.config.models import BaseModelSpec
from hwnas.errors import ConfigError

PLAN_FORMAT = "hwnas-channel-plan"
PLAN_VERSION = 1
# what rebuilds the architecture; weights, training and stages do not change it
ARCHITECTURE_KEYS = ("builtin", "factory", "torchvision", "kwargs")


def plan_document(spec: BaseModelSpec, input_shape: Sequence[int], num_classes: int,
                  steps: list[list[list[Any]]]) -> dict[str, Any]:
    return {"format": PLAN_FORMAT, "version": PLAN_VERSION,
            "base_model": {k: v for k, v in spec.model_dump(mode="json").items()
                           if k in ARCHITECTURE_KEYS and v not in (None, {})},
            "input_shape": list(input_shape), "num_classes": int(num_classes), "steps": steps}


def save_pruned(model: nn.Module, plan: dict[str, Any], state_path: Path, plan_path: Path) -> None:
    """Write the state_dict and the plan (with the state_dict's sha256), each atomically."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_name(f".{state_path.name}.tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(state_path)
    tmp_plan = plan_path.with_name(f".{plan_path.name}.tmp")
    tmp_plan.write_text(json.dumps({**plan, "state_dict": state_path.name,
                                    "state_dict_sha256": digest}, indent=1))
    tmp_plan.replace(plan_path)


def read_plan(plan_path: Path) -> dict[str, Any]:
    try:
        plan = json.loads(Path(plan_path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{plan_path}: cannot read the channel plan ({exc})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ConfigError(f"{plan_path}: not an hwnas channel plan (written by `hwnas export` "
                          f"as <model>.plan.json)")
    if plan.get("version") != PLAN_VERSION:
        raise ConfigError(f"{plan_path}: channel plan version {plan.get('version')}; this hwnas "
                          f"reads version {PLAN_VERSION}")
    return plan


def rebuild(plan: dict[str, Any]) -> nn.Module:
    """The pruned architecture (weights not loaded): base model built, plan replayed."""
    from hwnas.compress.prune import replay
    from hwnas.models.build import build_model
    from hwnas.models.transformers import split_attention

    spec = BaseModelSpec.model_validate({**plan["base_model"], "train": {}})
    shape = tuple(plan["input_shape"])
    model = build_model(spec, shape, plan["num_classes"], log=lambda _: None)
    split_attention(model)
    return replay(model, plan["steps"], torch.zeros((1, *shape)))


def load_pruned(plan_path: str | Path, state_path: str | Path | None = None) -> nn.Module:
    """The pruned, fine-tuned model, in eval mode, from ``<name>.plan.json`` (and the
    ``<name>.pt`` beside it, checked against the sha256 the plan records)."""
    plan_path = Path(plan_path)
    plan = read_plan(plan_path)
    state_path = Path(state_path) if state_path else plan_path.with_name(plan["state_dict"])
    try:
        data = state_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{state_path}: cannot read the weights ({exc.strerror or exc})") from None
    if hashlib.sha256(data).hexdigest() != plan.get("state_dict_sha256"):
        raise ConfigError(f"{state_path} is not the state_dict {plan_path.name} was written with "
                          f"(sha256 differs)")
    model = rebuild(plan)
    model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    return model.eval()


def onnx_reduced_precisions(onnx_path: str | Path) -> list[str]:
    """The precisions other than fp32 that an ONNX file's weighted nodes run in (read from
    the bytes: QDQ, float16)."""
    import onnx

    from hwnas.export.precision import realised_precisions

    try:
        found = realised_precisions(onnx.load(str(onnx_path), load_external_data=False))
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ConfigError(f"{onnx_path}: cannot read the ONNX model ({exc})") from None
    return sorted(set(found.values()) - {"fp32"})


def compare_with_onnx(model: nn.Module, onnx_path: str | Path, input_shape: Sequence[int],
                      samples: int = 8, seed: int = 0) -> tuple[float, float]:
    """(largest absolute difference of the outputs, share of samples given the same class) of
    the PyTorch model and an ONNX file on the same random inputs."""
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file
        raise ConfigError(f"{onnx_path}: cannot load the ONNX model ({exc})") from None
    x = torch.randn((samples, *input_shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return (float(np.abs(got - expected).max()),
            float((got.argmax(1) == expected.argmax(1)).mean()))
