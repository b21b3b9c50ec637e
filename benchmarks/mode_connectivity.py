"""Mode connectivity on digits: two MLPs 64-256-256-10 (ReLU) trained from two seeds on the
first 1,400 digits of scikit-learn (pixels / 16; SGD lr 0.05, momentum 0.9, batch 64, 40
epochs), and the train-loss barrier between them (the largest rise of the loss over the
straight interpolation of the two ends' losses, 25 points of t):

- along the straight line between them;
- along the straight line after `cr.align` (weight matching of the hidden units, and
  activation matching on the training data), with the largest output difference between
  the weight-matched model and the one it came from;
- along a quadratic Bezier curve between the unaligned models, its bend trained by
  `cr.connect` (1,500 steps, lr 0.05, batches of 64).

Each barrier's ratio to the straight line's is printed, with the seconds each step took. A
benchmark, not a test: nothing is asserted.

    python benchmarks/mode_connectivity.py [--seeds 1 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import crumple as cr
from crumple.examples import pair

T = np.linspace(0, 1, 25)
BATCH, LR = pair.BATCH, pair.LR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs=2, default=(1, 2))
    seeds = parser.parse_args().seeds
    x, y = pair.digits()
    began = time.perf_counter()
    a, b = (pair.trained(s) for s in seeds)
    print(f"two MLPs 64-256-256-10 trained from seeds {seeds[0]} and {seeds[1]} on "
          f"{pair.SAMPLES:,} digits: {time.perf_counter() - began:.1f} s")  # fmt: skip
    rows = []
    began = time.perf_counter()
    line = cr.path_loss(a, F.cross_entropy, (x, y), cr.Curve.line(a, b), T)
    rows.append(("straight line", line, time.perf_counter() - began))
    began = time.perf_counter()
    aligned = cr.align(a, b)
    with torch.no_grad():
        same = float((aligned(x) - b(x)).abs().max())
    path = cr.path_loss(a, F.cross_entropy, (x, y), cr.Curve.line(a, aligned), T)
    rows.append(("line after cr.align", path, time.perf_counter() - began))
    began = time.perf_counter()
    by_data = cr.align(a, b, method="activations", data=(x, y))
    path = cr.path_loss(a, F.cross_entropy, (x, y), cr.Curve.line(a, by_data), T)
    rows.append(("  by activations", path, time.perf_counter() - began))
    began = time.perf_counter()
    loader = DataLoader(
        TensorDataset(x, y), batch_size=BATCH, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    curve = cr.connect(a, b, F.cross_entropy, loader, steps=1500, lr=LR)
    bent = cr.path_loss(a, F.cross_entropy, (x, y), curve, T)
    rows.append(("Bezier curve (cr.connect)", bent, time.perf_counter() - began))
    print(f"train loss at the ends: {line.attrs['loss_a']:.4f} and {line.attrs['loss_b']:.4f}")
    print(f"{'':28}{'barrier':>10}{'/ line':>9}{'at t':>7}{'seconds':>9}")
    for name, ds, seconds in rows:
        ratio = ds.attrs["barrier"] / line.attrs["barrier"]
        print(
            f"{name:28}{ds.attrs['barrier']:10.4f}{ratio:9.3f}{ds.attrs['barrier_t']:7.2f}"
            f"{seconds:9.1f}"
        )
    print(f"the aligned model's outputs differ from the original's by at most {same:.1e} (float32)")


if __name__ == "__main__":
    main()
