"""Validated records for cell search spaces (NAS-Bench-201 style), built on config/models.py.

A cell space names the edges of a small DAG and the operations an edge may carry. The
order of `operations` is the encoding of the benchmark tables (operation index per edge),
so a replay checks it against the table it reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from hwnas.config import load_record
from hwnas.config.models import Frozen, Name

Operation = Literal["skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3"]


class CellNetworkSpec(Frozen):
    """The network a cell is stacked into, for proxies built from the real architecture."""

    channels: Annotated[int, Field(ge=1, le=1024)] = 16
    cells_per_stage: Annotated[int, Field(ge=1, le=32)] = 5
    num_classes: Annotated[int, Field(ge=2)] = 10


class CellSpace(Frozen):
    name: Name
    nodes: Annotated[int, Field(ge=2, le=8)] = 4
    # (from, to) node pairs, from < to; node 0 is the cell input, the last node its output
    edges: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]]
    operations: list[Operation]
    network: CellNetworkSpec = CellNetworkSpec()

    @field_validator("edges")
    @classmethod
    def _edges_in_cell(cls, value: list[tuple[int, int]], info: ValidationInfo
                       ) -> list[tuple[int, int]]:
        nodes = info.data.get("nodes", 4)
        for index, (source, target) in enumerate(value):
            if not source < target < nodes:
                raise ValueError(f"entry {index}: ({source}, {target}) is not an edge of a "
                                 f"{nodes}-node cell; allowed: (i, j) with 0 <= i < j <= {nodes - 1}")
        if len(set(value)) != len(value):
            raise ValueError("each (from, to) pair may appear once")
        return value

    @field_validator("operations")
    @classmethod
    def _operations_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or len(value) < 2:
            raise ValueError("name at least two operations, each once")
        return value

    def parameter(self, edge: tuple[int, int]) -> str:
        """The Optuna parameter name of one edge, e.g. ``edge_0_1``."""
        return f"edge_{edge[0]}_{edge[1]}"


def load_cell_space(path: str | Path) -> CellSpace:
    return load_record(path, CellSpace, "cell search space")
