"""NAS-Bench-201 cells as real torch networks, and zero-cost proxies computed on them.

The network is the benchmark's CIFAR macro skeleton (Dong & Yang, ICLR 2020): a 3x3 stem,
three stages of N cells at C, 2C, 4C channels joined by residual reduction blocks, global
pooling and a linear head; C=16, N=5 is the size the benchmark trained. A cell is a DAG of
four nodes; each of its six edges (0,1),(0,2),(0,3),(1,2),(1,3),(2,3) carries one operation.

Proxies score an *untrained* network from one or two passes (Abdelfattah et al., ICLR 2021;
Mellor et al., ICML 2021); nothing here ever reads an accuracy. Written from the papers'
definitions, not copied from their code.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from hwnas.models.core import multiply_accumulates

OPERATIONS = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
NONE = OPERATIONS.index("none")


def parse_net(text: str) -> tuple[int, ...]:
    """The tables' `net` key, e.g. "(4, 3, 3, 0, 0, 0)": one operation index per edge."""
    ops = tuple(int(part) for part in text.strip().strip("()").split(","))
    if len(ops) != len(EDGES) or not all(0 <= op < len(OPERATIONS) for op in ops):
        raise ValueError(f"{text!r} is not a cell: six operation indices 0-4")
    return ops


def canonical_cell(ops: Sequence[int]) -> tuple[int, ...]:
    """The same function with every edge that cannot carry input to output set to 'none'.

    An edge i->j matters only if node i is reachable from the input and the output is
    reachable from node j (through edges that are not 'none'); the rest is dead compute.
    NAS-Bench-201's table keeps exactly one cell per such class (9,445 of 15,625).
    """
    live = [op != NONE for op in ops]
    forward = {0}
    for node in (1, 2, 3):
        if any(live[k] and i in forward for k, (i, j) in enumerate(EDGES) if j == node):
            forward.add(node)
    backward = {3}
    for node in (2, 1, 0):
        if any(live[k] and j in backward for k, (i, j) in enumerate(EDGES) if i == node):
            backward.add(node)
    return tuple(op if live[k] and i in forward and j in backward else NONE
                 for k, ((i, j), op) in enumerate(zip(EDGES, ops)))


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


def _operation(op: int, channels: int) -> nn.Module | None:
    name = OPERATIONS[op]
    if name == "none":
        return None
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    return ReLUConvBN(channels, channels, 3 if name == "nor_conv_3x3" else 1)


class Cell(nn.Module):
    def __init__(self, ops: Sequence[int], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict()
        for (i, j), op in zip(EDGES, ops):
            module = _operation(op, channels)
            if module is not None:
                self.edges[f"{i}_{j}"] = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            parts = [self.edges[f"{i}_{node}"](nodes[i]) for i in range(node)
                     if f"{i}_{node}" in self.edges]
            nodes.append(sum(parts) if parts else torch.zeros_like(x))
        return nodes[3]


class ResidualReduction(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.b = ReLUConvBN(c_out, c_out, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)) + self.shortcut(x)


class CellNetwork(nn.Module):
    def __init__(self, ops: Sequence[int], channels: int = 16, cells_per_stage: int = 5,
                 num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels)]
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(c, c * 2))
                c *= 2
            layers += [Cell(ops, c) for _ in range(cells_per_stage)]
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclasses.dataclass(frozen=True)
class CellProxies:
    """Zero-cost figures of one untrained cell network (larger = predicted more accurate)."""

    parameters: int
    flops: int  # multiply-accumulates of one 32x32 image
    # None where not computed: the size-only pass builds the network but runs no batch
    log_synflow: float | None = None
    naswot: float | None = None
    # the backward-pass proxies cost 2-3x the rest; None where they were not computed
    grad_norm: float | None = None
    snip: float | None = None
    jacob_cov: float | None = None

    def as_features(self) -> dict[str, float]:
        features = {"log_parameters": math.log(self.parameters),
                    "log_flops": math.log(self.flops)}
        if self.log_synflow is not None and self.naswot is not None:
            features.update({"log_synflow": self.log_synflow, "naswot": self.naswot})
        if self.grad_norm is not None and self.snip is not None and self.jacob_cov is not None:
            features.update({"log_grad_norm": math.log(self.grad_norm + 1e-12),
                             "log_snip": math.log(self.snip + 1e-12), "jacob_cov": self.jacob_cov})
        return features


def _weights(network: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _log_synflow(network: nn.Module, shape: tuple[int, ...]) -> float:
    """Synaptic flow (Tanaka et al. 2020): |w| everywhere, an all-ones input, sum(|w * dR/dw|).

    Data-free by design. Double precision because the product over 17 layers overflows
    float32; batch norm in eval mode at its initial statistics is the identity here.
    """
    network = network.double().eval()
    with torch.no_grad():
        signs = [p.sign() for p in network.parameters()]
        for p in network.parameters():
            p.abs_()
    network.zero_grad()
    network(torch.ones((1, *shape), dtype=torch.float64)).sum().backward()
    with torch.no_grad():
        score = sum(float((w * w.grad).abs().sum()) for w in _weights(network)
                    if w.grad is not None)
    with torch.no_grad():
        for p, sign in zip(network.parameters(), signs):
            p.mul_(sign)
    network.float()
    return math.log(score) if score > 0 else -1e3


def cell_proxies(ops: Sequence[int], images: torch.Tensor, labels: torch.Tensor,
                 seed: int = 0, backward: bool = False, channels: int = 16,
                 cells_per_stage: int = 5, num_classes: int = 10,
                 size_only: bool = False) -> CellProxies:
    """Proxies of one cell from one freshly initialised network (seeded).

    ``backward`` adds jacob_cov, grad_norm and snip, which need backward passes;
    ``size_only`` gives parameters and FLOPs alone (no batch is run: 30x cheaper).
    """
    torch.manual_seed(seed)
    network = CellNetwork(ops, channels, cells_per_stage, num_classes)
    parameters = sum(p.numel() for p in network.parameters())
    flops = multiply_accumulates(network.eval(), images[:1])
    if size_only:
        return CellProxies(parameters, flops)
    # before any batch has moved the batch-norm statistics: synflow stays data-free
    log_synflow = _log_synflow(network, tuple(images.shape[1:]))
    network.train()

    # NASWOT (Mellor et al.): binary ReLU activation codes of a batch; log|K| where K counts
    # the units on which two images agree. One forward serves NASWOT, the Jacobian
    # covariance (d sum(output) / d input) and the loss gradients (grad_norm, snip).
    n = len(images)
    kernel = torch.zeros((n, n), dtype=torch.float64)

    def add_codes(_module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        # K_ij = units where i and j agree = L - |c_i| - |c_j| + 2 c_i.c_j, summed per layer
        c = (inputs[0].detach() > 0).flatten(1).to(torch.float32)
        ones = c.sum(1).double()
        kernel.add_(2 * (c @ c.T).double() - ones[:, None] - ones[None, :] + c.shape[1])

    hooks = [m.register_forward_hook(add_codes) for m in network.modules()
             if isinstance(m, nn.ReLU)]
    # gradients to the input only: the weights' gradients are not needed for these two
    for p in network.parameters():
        p.requires_grad_(False)
    x = images.clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        output = network(x)
    for hook in hooks:
        hook.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    naswot = float(logdet) if float(sign) > 0 else -1e6  # singular: all codes alike, worst
    if not backward:
        for p in network.parameters():
            p.requires_grad_(True)
        return CellProxies(parameters, flops, log_synflow, naswot)

    jacob_cov = -1e6  # the output does not depend on the input (no path): worst score
    if output.requires_grad:
        output.sum().backward()
    for p in network.parameters():
        p.requires_grad_(True)
    if x.grad is not None:
        jacobians = x.grad.flatten(1).double()
        centred = jacobians - jacobians.mean(1, keepdim=True)
        norms = centred.norm(dim=1, keepdim=True)
        if bool((norms > 0).all()):
            unit = centred / norms
            eig = torch.linalg.eigvalsh(unit @ unit.T)
            jacob_cov = float(-torch.sum(torch.log(eig + 1e-5) + 1.0 / (eig + 1e-5)))

    # grad_norm and snip (Lee et al. 2019) on a smaller batch: they are the weakest proxies
    # on NAS-Bench-201 in the literature and the costliest pass here
    network.zero_grad()
    few = min(len(images), 8)
    nn.functional.cross_entropy(network(images[:few]), labels[:few]).backward()
    with torch.no_grad():
        weights = [w for w in _weights(network) if w.grad is not None]
        grad_norm = float(sum(w.grad.norm() for w in weights))
        snip = float(sum((w * w.grad).abs().sum() for w in weights))
    return CellProxies(parameters, flops, log_synflow, naswot, grad_norm, snip, jacob_cov)


PROXY_IMAGES_HOW = "pass the folder holding them (search_replay.py --fashion-mnist DIR)"


def fashion_mnist_batch(count: int = 16, seed: int = 0, folder: Path | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images for the data-dependent proxies: Fashion-MNIST padded to 32x32, 3 channels,
    from ``folder`` (default: where the Debian package dataset-fashion-mnist puts it).

    CIFAR-10 is not available here; these are real photographs of a 10-class task at the
    benchmark's input size, which is what NASWOT/jacob_cov/grad_norm need (not the labels
    of CIFAR itself).
    """
    from hwnas.data import fashion_mnist

    found = fashion_mnist.idx_files(folder or fashion_mnist.DEBIAN_DIR,
                                    ("train_images", "train_labels"), PROXY_IMAGES_HOW)
    images = fashion_mnist.read_idx(found["train_images"])
    labels = fashion_mnist.read_idx(found["train_labels"])
    pick = np.random.default_rng(seed).choice(len(images), size=count, replace=False)
    x = (images[pick].astype(np.float32) / 255.0 - fashion_mnist.MEAN) / fashion_mnist.STD
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    x = np.repeat(x[:, None], 3, axis=1)
    return torch.from_numpy(x), torch.from_numpy(labels[pick].astype(np.int64))
