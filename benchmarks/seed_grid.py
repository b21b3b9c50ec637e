"""The article's grid loop against crumple.surface on the article's 80 x 80 grid.

The article sets the two weights, iterates the test DataLoader (batch size 64) and
averages the batch losses, once per grid point. This script times that loop on a random
sample of grid points, extrapolates its per-point cost to the full grid, and times
``crumple.surface`` on the full grid in the same run. Target: at least 1,000x.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import crumple as cr
from crumple.examples import seed


def article_loop(model, test_loader, w1s, w2s):
    """The article's loop, over the given (w1, w2) pairs."""
    loss = nn.MSELoss()
    out = []
    for w1, w2 in zip(w1s, w2s):
        model.Layer_1.weight.data = torch.tensor([[w1]], dtype=torch.float32)
        model.Layer_2.weight.data = torch.tensor([[w2]], dtype=torch.float32)
        total_loss = 0
        with torch.no_grad():
            for x, y in test_loader:
                preds = model(x.reshape(-1, 1))
                total_loss += loss(preds, y).item()
        out.append(total_loss / len(test_loader))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=128, help="grid points the loop visits")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of crumple.surface")
    args = parser.parse_args()
    if args.sample < 64:
        parser.error("--sample must be at least 64")

    _, test = seed.split(*seed.make_data())
    axis = np.arange(-2, 2, 0.05)
    grid = cr.Grid(axis, axis)
    model = seed.SeedNet()
    plane = cr.Plane.axes(model, *seed.AXES)
    loader = DataLoader(TensorDataset(*test), batch_size=64)

    rng = np.random.default_rng(0)
    flat = rng.choice(grid.size, size=args.sample, replace=False)
    rows, cols = np.unravel_index(flat, grid.shape)
    article_loop(seed.SeedNet(), loader, axis[rows[:4]], axis[cols[:4]])  # warm-up
    start = time.perf_counter()
    looped = article_loop(seed.SeedNet(), loader, axis[rows], axis[cols])
    per_point = (time.perf_counter() - start) / args.sample
    loop_full = per_point * grid.size

    cr.surface(model, nn.functional.mse_loss, test, plane, grid)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ds = cr.surface(model, nn.functional.mse_loss, test, plane, grid)
        times.append(time.perf_counter() - start)
    fast = statistics.median(times)

    exact = ds.loss.values[rows, cols]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"grid {grid.shape[0]} x {grid.shape[1]} = {grid.size} points, {len(test[0])} test samples"
    )
    print(
        f"article loop: {per_point * 1e3:.2f} ms per point over {args.sample} sampled points "
        f"-> {loop_full:.1f} s for the full grid (extrapolated)"
    )
    print(
        f"crumple.surface: {fast * 1e3:.1f} ms for the full grid "
        f"(median of {args.repeats}; min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})"
    )
    print(f"speed-up: {loop_full / fast:,.0f}x (target >= 1,000x)")
    rel = np.abs(looped - exact) / np.abs(exact)
    print(
        f"at the sampled points the article's mean of batch means differs from crumple's exact "
        f"test mean by up to {rel.max():.1e} relative (its last batch holds "
        f"{len(test[0]) % 64} samples, weighed like the others)"
    )


if __name__ == "__main__":
    main()
