"""Zero-cost proxies of every NAS-Bench-201 cell in the accuracy table, computed from the
real architectures (torch, C=16, N=5, untrained, seed 0) -> benchmarks/nb201_proxies.csv.

The replay benchmark reads this cache instead of spending CPU-hours at every start. It
never reads an accuracy: the accuracy table is used only for its list of cells (`net`).
Resumable: cells already in the output are skipped. Cheap cells (fewest convolutions) are
computed first. The committed cache: parameters, FLOPs, synflow and NASWOT for the 5,000
cheapest cells (the full pass on a shared 2-core VM ran at ~1-2 cells/s), then
`--size-only` (parameters and FLOPs) for the rest; the replay uses the proxies every cell
has and reports the rank correlation of each over the cells that have it.

    .venv/bin/python benchmarks/nb201_proxies.py \
        --accuracy benchmarks/data/hw-nas-bench/nb201_valid_nets.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import multiprocessing
import time
from pathlib import Path

import torch

from hwnas.bench.nb201 import CellProxies, cell_proxies, fashion_mnist_batch, parse_net

OUT = Path(__file__).resolve().parent / "nb201_proxies.csv"
COLUMNS = ["net"] + [f.name for f in dataclasses.fields(CellProxies)]


_WORKER: dict = {}


def _start(threads: int, backward: bool, size_only: bool) -> None:
    torch.set_num_threads(threads)
    _WORKER["batch"] = fashion_mnist_batch()
    _WORKER["options"] = {"backward": backward, "size_only": size_only}


def _one(net: tuple[int, ...]) -> tuple[tuple[int, ...], CellProxies]:
    images, labels = _WORKER["batch"]
    return net, cell_proxies(net, images, labels, **_WORKER["options"])


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accuracy", required=True, type=Path,
                        help="nb201_valid_nets.csv (only its `net` column is read)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--size-only", action="store_true",
                        help="parameters and FLOPs only (no batch is run; ~30x faster)")
    parser.add_argument("--backward", action="store_true",
                        help="also jacob_cov, grad_norm, snip (about 3x the time)")
    args = parser.parse_args()
    with args.accuracy.open() as handle:
        nets = [parse_net(row["net"]) for row in csv.DictReader(handle)]
    done = set()
    if args.out.exists():
        with args.out.open() as handle:
            done = {parse_net(row["net"]) for row in csv.DictReader(handle)}
    todo = sorted((n for n in nets if n not in done), key=lambda n: (n.count(2), n.count(3), n))
    new_file = not args.out.exists()
    started = time.perf_counter()
    with args.out.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(COLUMNS)
        with multiprocessing.Pool(args.jobs, _start,
                                  (args.threads, args.backward, args.size_only)) as pool:
            for index, (net, proxies) in enumerate(pool.imap(_one, todo, chunksize=4), 1):
                writer.writerow([str(net)] + [_cell(getattr(proxies, c)) for c in COLUMNS[1:]])
                if index % 200 == 0:
                    handle.flush()
                    rate = index / (time.perf_counter() - started)
                    print(f"{index}/{len(todo)} cells, {rate:.2f}/s", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
