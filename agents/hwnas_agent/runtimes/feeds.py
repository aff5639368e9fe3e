"""The inputs a runtime feeds a model: deterministic random floats, zero integers, the first
dynamic dimension as the batch (every runtime measures on the same kind of inputs)."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from hwnas_agent.runtimes.base import RuntimeUnavailable

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
