"""Replay evaluator: NAS-Bench-201 cells against HW-NAS-Bench tables measured by others.

Accuracy and hardware tables are joined on `net`. Only the 9,445 cells of the accuracy
table are candidates. Every other cell of the 15,625 has edges that cannot carry the input
to the output (an operation whose source node is unreachable from the input, or whose
target cannot reach the output); it computes the same function as the cell with those dead
edges set to 'none', which is in the table (NAS-Bench-201 keeps one cell per such class).
So `suggest` maps every encoding to that canonical cell, and both its accuracy and its
hardware figures are the canonical cell's: a deployment would not run dead operations.

Hardware figures are exact table values unless ``noise_cv`` is set: then each measurement
round draws the figure with that coefficient of variation, as a real device would. With
``drift_cv`` as well, each measurement is scaled by one log-normal factor of that sd too,
which its own rounds cannot average away and its interval does not show: what a shared
machine's load does between measurements minutes apart.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import optuna

from hwnas.bench.cells import CellSpace
from hwnas.bench.nb201 import OPERATIONS, canonical_cell, parse_net
from hwnas.errors import ConfigError
from hwnas.search.evaluator import Budget, Evaluator, HardwareFigure, HardwareReport

Z95 = 1.959964


@dataclasses.dataclass(frozen=True)
class Cell:
    """One NAS-Bench-201 cell in canonical form: an operation index per edge."""

    ops: tuple[int, ...]

    @property
    def net(self) -> str:
        return str(self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {"net": self.net, "operations": [OPERATIONS[op] for op in self.ops]}


def _rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)}; columns: {', '.join(columns)}")
    return rows


@dataclasses.dataclass(frozen=True)
class ReplayTable:
    """Accuracy (%) and hardware figures of every valid cell, joined on `net`."""

    accuracy: Mapping[tuple[int, ...], float]
    hardware: Mapping[str, Mapping[tuple[int, ...], float]]  # column -> cell -> figure

    @classmethod
    def load(cls, accuracy_csv: str | Path, hardware_csv: str | Path,
             metrics: Sequence[str]) -> "ReplayTable":
        accuracy_csv, hardware_csv = Path(accuracy_csv), Path(hardware_csv)
        accuracy: dict[tuple[int, ...], float] = {}
        for index, row in enumerate(_rows(accuracy_csv, ["net", "val_accs"]), start=2):
            try:
                accuracy[parse_net(row["net"])] = float(row["val_accs"])
            except ValueError as exc:
                raise ConfigError(f"{accuracy_csv}: line {index}: {exc}") from None
        hardware: dict[str, dict[tuple[int, ...], float]] = {m: {} for m in metrics}
        for index, row in enumerate(_rows(hardware_csv, ["net", *metrics]), start=2):
            try:
                net = parse_net(row["net"])
                if net in accuracy:
                    for metric in metrics:
                        hardware[metric][net] = float(row[metric])
            except ValueError as exc:
                raise ConfigError(f"{hardware_csv}: line {index}: {exc}") from None
        for metric, values in hardware.items():
            absent = len(accuracy) - len(values)
            invalid = sum(1 for v in values.values() if not (v > 0 and math.isfinite(v)))
            if absent or invalid:
                raise ConfigError(f"{hardware_csv}: column {metric}: {absent} cells of the "
                                  f"accuracy table have no row and {invalid} have no positive "
                                  f"value (-1 marks a missing measurement); choose another column")
        for net in accuracy:
            if canonical_cell(net) != net:
                raise ConfigError(f"{accuracy_csv}: cell {net} has dead edges; the table must "
                                  f"hold one canonical cell per class (NAS-Bench-201 valid nets)")
        return cls(accuracy, hardware)

    def budget(self, metric: str, quantile: float) -> Budget:
        """The budget at a quantile of the metric over the valid cells (0.1 = fastest 10%)."""
        if not 0 < quantile < 1:
            raise ConfigError(f"--budget-quantile: {quantile} is not in (0, 1)")
        return Budget(metric, float(np.quantile(list(self.hardware[metric].values()), quantile)))

    def feasible(self, budgets: Sequence[Budget]) -> dict[tuple[int, ...], float]:
        """Ground truth for scoring a search (never shown to it): feasible cell -> accuracy."""
        return {net: acc for net, acc in self.accuracy.items()
                if all(b.met(self.hardware[b.figure][net]) for b in budgets)}


def load_proxies(path: str | Path) -> dict[tuple[int, ...], dict[str, float]]:
    """The cache written by benchmarks/nb201_proxies.py: cell -> proxy features."""
    from hwnas.bench.nb201 import CellProxies

    cached: dict[tuple[int, ...], dict[str, float]] = {}
    for row in _rows(Path(path), ["net", "parameters", "flops"]):
        optional = {k: float(row[k]) if row.get(k) else None
                    for k in ("log_synflow", "naswot", "grad_norm", "snip", "jacob_cov")}
        proxies = CellProxies(int(row["parameters"]), int(row["flops"]), **optional)
        cached[parse_net(row["net"])] = proxies.as_features()
    return cached


def common_features(proxies: Mapping[tuple[int, ...], Mapping[str, float]]
                    ) -> dict[tuple[int, ...], dict[str, float]]:
    """Only the proxies every cell has: a model needs the same features for all."""
    names = set.intersection(*(set(p) for p in proxies.values())) if proxies else set()
    return {cell: {n: p[n] for n in sorted(names)} for cell, p in proxies.items()}


class ReplayEvaluator(Evaluator):
    """Looks figures up in a ReplayTable; counts what a search paid for."""

    def __init__(self, space: CellSpace, table: ReplayTable, budgets: Sequence[Budget],
                 proxies: Mapping[tuple[int, ...], Mapping[str, float]] | None = None,
                 noise_cv: float = 0.0, default_rounds: int = 1, seed: int = 0,
                 drift_cv: float = 0.0, proxy_images: Path | None = None) -> None:
        """``proxy_images``: the Fashion-MNIST folder that scores cells missing from
        ``proxies`` (default: the Debian package's)."""
        if tuple(space.operations) != OPERATIONS or len(space.edges) != 6:
            raise ConfigError(f"search space {space.name}: the NAS-Bench-201 tables encode six "
                              f"edges and the operations {list(OPERATIONS)} in this order")
        self.space, self.table = space, table
        self.budgets = tuple(budgets)
        self.figures = tuple(dict.fromkeys(b.figure for b in budgets))
        self._proxies = proxies
        self.proxy_images = proxy_images
        self.noise_cv, self.default_rounds = noise_cv, default_rounds
        if drift_cv and not noise_cv:
            raise ValueError("drift_cv needs noise_cv: a measurement without an interval is exact")
        self.drift_cv = drift_cv
        self._rng = np.random.default_rng(seed)
        self.accuracy_evaluations = 0
        self.measurements = 0
        self.measurement_rounds = 0

    def suggest(self, trial: optuna.trial.BaseTrial) -> Cell:
        ops = [OPERATIONS.index(trial.suggest_categorical(self.space.parameter(tuple(edge)),
                                                          list(OPERATIONS)))
               for edge in self.space.edges]
        return Cell(canonical_cell(ops))

    def parameters(self, candidate: Cell) -> dict[str, Any]:
        return {self.space.parameter(tuple(edge)): OPERATIONS[op]
                for edge, op in zip(self.space.edges, candidate.ops)}

    def measure(self, candidate: Cell, rounds: int | None = None) -> HardwareReport:
        rounds = rounds or self.default_rounds
        self.measurements += 1
        self.measurement_rounds += rounds
        figures = []
        drift = math.exp(self.drift_cv * self._rng.standard_normal()) if self.drift_cv else 1.0
        for name in self.figures:
            true = self.table.hardware[name][candidate.ops]
            if self.noise_cv <= 0:
                figures.append(HardwareFigure(name, true, (true, true), rounds))
                continue
            # each round's figure scatters around the true one; their mean is reported with
            # the interval that the device's known noise level gives for that many rounds
            value = drift * float(np.mean(
                true * (1 + self.noise_cv * self._rng.standard_normal(rounds))))
            half = Z95 * self.noise_cv * value / math.sqrt(rounds)
            figures.append(HardwareFigure(name, value, (value - half, value + half), rounds,
                                          self.noise_cv))
        return HardwareReport(tuple(figures), {"source": "replay", "rounds": rounds})

    def evaluate(self, candidate: Cell, fidelity: float) -> float:
        if fidelity != 1.0:
            raise ValueError("the NAS-Bench-201 table holds final accuracies only (fidelity 1.0)")
        self.accuracy_evaluations += 1
        return self.table.accuracy[candidate.ops]

    def proxies(self, candidate: Cell) -> Mapping[str, float]:
        if self._proxies is None:
            return {}
        if candidate.ops not in self._proxies:
            self._proxies = dict(self._proxies)
            self._proxies[candidate.ops] = _compute_proxies(candidate.ops, self.space,
                                                            self.proxy_images)
        return self._proxies[candidate.ops]


def _compute_proxies(ops: tuple[int, ...], space: CellSpace,
                     images_folder: Path | None = None) -> dict[str, float]:
    """A cell missing from the cache: built and scored now (about a second on a CPU)."""
    from hwnas.bench.nb201 import cell_proxies, fashion_mnist_batch

    images, labels = fashion_mnist_batch(folder=images_folder)
    net = space.network
    return cell_proxies(ops, images, labels, channels=net.channels,
                        cells_per_stage=net.cells_per_stage,
                        num_classes=net.num_classes).as_features()
