"""The replay evaluator, its tables and the NAS-Bench-201 cells built in torch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hwnas.bench.cells import load_cell_space
from hwnas.bench.nb201 import CellNetwork, canonical_cell, cell_proxies, fashion_mnist_batch
from hwnas.bench.replay import ReplayEvaluator, ReplayTable, load_proxies
from hwnas.errors import ConfigError
from tests.conftest import REPO
from tests.search.test_engine import DATA, METRIC, space, table  # noqa: F401


def test_every_cell_maps_to_one_valid_candidate(table):
    """The 15,625 encodings fall into the 9,445 table cells; each table cell is canonical."""
    images = {canonical_cell(ops) for ops in itertools.product(range(5), repeat=6)}
    assert images == set(table.accuracy)
    assert len(table.accuracy) == 9445


def test_budget_quantile_and_ground_truth(table):
    budget = table.budget(METRIC, 0.1)
    feasible = table.feasible([budget])
    assert len(feasible) == 945
    assert max(feasible.values()) == 88.08  # the Raspberry Pi 4 setting


def test_missing_measurements_are_refused_with_the_column_named(tmp_path):
    with pytest.raises(ConfigError, match=r"edgetpu_latency: .*-1 marks a missing"):
        ReplayTable.load(DATA / "nb201_valid_nets.csv", DATA / "hw_cifar10.csv",
                         ["edgetpu_latency"])
    with pytest.raises(ConfigError, match=r"no column raspi5_latency; columns: net, "):
        ReplayTable.load(DATA / "nb201_valid_nets.csv", DATA / "hw_cifar10.csv",
                         ["raspi5_latency"])
    with pytest.raises(ConfigError, match="--budget-quantile: 1.5"):
        ReplayTable.load(DATA / "nb201_valid_nets.csv", DATA / "hw_cifar10.csv",
                         [METRIC]).budget(METRIC, 1.5)


def test_operations_must_follow_the_table_encoding(tmp_path, table):
    text = (REPO / "search_spaces" / "nb201.yaml").read_text().replace(
        "[skip_connect, none,", "[none, skip_connect,")
    (tmp_path / "swapped.yaml").write_text(text)
    with pytest.raises(ConfigError, match="operations .* in this order"):
        ReplayEvaluator(load_cell_space(tmp_path / "swapped.yaml"), table,
                        [table.budget(METRIC, 0.5)])


def test_cell_space_errors_name_file_key_and_allowed(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text("name: x\nedges: [[0, 1], [3, 2]]\noperations: [skip_connect, conv5]\n")
    with pytest.raises(ConfigError) as caught:
        load_cell_space(path)
    message = str(caught.value)
    assert str(path) in message
    assert "key 'edges': entry 1: (3, 2) is not an edge" in message
    assert "key 'operations.1'" in message and "'nor_conv_3x3'" in message


def test_network_and_proxies_from_the_real_architecture():
    images, labels = fashion_mnist_batch(8)
    assert images.shape == (8, 3, 32, 32)
    best = (2, 2, 2, 2, 2, 2)  # every edge a 3x3 convolution
    network = CellNetwork(best)
    assert network(images).shape == (8, 10)
    # 15 cells x 6 edges of ReLU-Conv3x3-BN, the stem, two reductions, the head
    assert sum(p.numel() for p in network.parameters()) == 1_531_546
    dense = cell_proxies(best, images, labels, backward=True)
    sparse = cell_proxies(canonical_cell((0, 1, 1, 1, 1, 4)), images, labels, backward=True)
    for proxies in (dense, sparse):
        assert all(math.isfinite(v) for v in proxies.as_features().values())
    assert dense.parameters > sparse.parameters and dense.flops > sparse.flops
    assert dense.log_synflow > sparse.log_synflow
    # no path from input to output: the worst score a proxy can give
    dead = cell_proxies(canonical_cell((1,) * 6), images, labels)
    assert dead.naswot == -1e6 and dead.log_synflow == -1e3


def test_proxy_cache_matches_a_fresh_computation():
    cache = REPO / "benchmarks" / "nb201_proxies.csv"
    if not cache.exists():
        pytest.skip("no proxy cache")
    cached = load_proxies(cache)
    images, labels = fashion_mnist_batch()
    torch.set_num_threads(1)
    for ops in list(cached)[:2]:
        fresh = cell_proxies(ops, images, labels).as_features()
        for key, value in fresh.items():
            assert cached[ops][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_the_replay_tables_are_the_published_files():
    """The CSVs in the repository are byte for byte the ones whose sha256 their README lists
    (a re-export or a line-ending change would move every replay figure)."""
    import hashlib
    import re

    listed = dict(re.findall(r"^- (\S+\.csv) ([0-9a-f]{64})$", (DATA / "README.md").read_text(),
                             re.MULTILINE))
    assert len(listed) == 4
    for name, sha256 in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == sha256, name


def test_proxy_images_missing_name_the_debian_package(tmp_path, monkeypatch):
    """Without dataset-fashion-mnist (its folder empty here): a ConfigError that says where
    the images come from, not "'NoneType' object has no attribute 'suffix'"."""
    from hwnas.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"no train-images-idx3-ubyte, train-labels-idx1-ubyte "
                                          r".*Debian package dataset-fashion-mnist"):
        fashion_mnist_batch()
    with pytest.raises(ConfigError, match=r"--fashion-mnist DIR"):
        fashion_mnist_batch(folder=tmp_path / "elsewhere")


def test_the_replay_benchmark_without_the_images_is_one_line(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "search_replay.py"),
         "--accuracy", str(DATA / "nb201_valid_nets.csv"), "--hardware",
         str(DATA / "hw_cifar10.csv"), "--metric", METRIC, "--budget-quantile", "0.1",
         "--seeds", "1", "--strategies", "hwnas", "--json", str(tmp_path / "r.json"),
         "--fashion-mnist", str(tmp_path)], capture_output=True, text=True, timeout=600)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "dataset-fashion-mnist" in lines[0] and str(tmp_path) in lines[0]
    assert not (tmp_path / "r.json").exists()
