"""crumple against the classic per-point loop and the `loss-landscapes` package, on an MLP
and a small CNN, measured side by side in one run.

MLP 784-256-256-10 on 2,048 inputs over a 21 x 21 grid; CNN (3x3 convolutions 3->16->32 with
ReLU, then a linear head) on 512 inputs of 3x32x32 over an 11 x 11 grid. Each method
evaluates a random filter-normalized plane. Targets: on the MLP at least 2.5x the loop and
the package; on the CNN never slower than the loop. Also prints the achieved GFLOP/s
(nominal forward FLOPs of every grid point over the wall time) beside a plain matmul's.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import crumple as cr


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 32 * 32, 10),
    )


def classic_loop(model, loader, plane, grid, device):
    """What the classic tools do: write each point's weights into a copy of the model, then
    evaluate the loader."""
    work = copy.deepcopy(model).eval()
    params = dict(work.named_parameters())
    out = np.empty(grid.shape)
    with torch.no_grad():
        for i, a in enumerate(grid.axes[0]):
            for j, b in enumerate(grid.axes[1]):
                for name, w in plane.at(float(a), float(b)).items():
                    params[name].copy_(w)
                total = n = 0
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    total += float(F.cross_entropy(work(x), y)) * len(x)
                    n += len(x)
                out[i, j] = total / n
    return out


def package(model, x, y, steps):
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    metric = Loss(nn.CrossEntropyLoss(), x, y)
    return loss_landscapes.random_plane(
        model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def matmul_gflops(device, n=2048, repeats=10) -> float:
    a = torch.randn(n, n, device=device)
    a @ a
    _, seconds = timed(lambda: [a @ a for _ in range(repeats)])
    return 2 * n**3 * repeats / seconds / 1e9


def case(name, model, x, y, steps, batch_size, device, skip_package, repeats):
    torch.manual_seed(0)
    model = model.to(device).eval()
    x, y = x.to(device), y.to(device)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    plane = cr.Plane.random(model, normalize="filter", seed=0)
    axis = np.linspace(-1, 1, steps)
    grid = cr.Grid(axis, axis)
    with FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops() * grid.size

    cr.surface(model, F.cross_entropy, loader, plane, cr.Grid(axis[:2], axis[:2]))  # warm-up
    methods = {
        "crumple": lambda: cr.surface(model, F.cross_entropy, loader, plane, grid),
        "loop": lambda: classic_loop(model, loader, plane, grid, device),
    }
    if not skip_package:
        methods["package"] = lambda: package(model, x, y, steps)
    times = {m: [] for m in methods}
    results = {}
    for _ in range(repeats):  # interleaved, so that load on the machine hits all alike
        for m, fn in methods.items():
            results[m], seconds = timed(fn)
            times[m].append(seconds)
    t = {m: float(np.median(v)) for m, v in times.items()}
    ds = results["crumple"]
    rel = np.abs(ds.loss.values - results["loop"]) / np.abs(results["loop"])

    print(
        f"\n{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(x)} inputs in batches of {batch_size}, grid {steps} x {steps}, "
        f"{flops / grid.size / 1e9:.2f} GFLOP per point; median of {repeats} interleaved runs"
    )
    print(
        f"  crumple ({ds.attrs['strategy']}, {ds.attrs['chunk_size']} points per tile): "
        f"{t['crumple']:7.2f} s  {flops / t['crumple'] / 1e9:6.1f} GFLOP/s"
    )
    print(
        f"  per-point loop:                 {t['loop']:7.2f} s  "
        f"{flops / t['loop'] / 1e9:6.1f} GFLOP/s  -> crumple {t['loop'] / t['crumple']:.2f}x"
    )
    if "package" in t:
        print(
            f"  loss-landscapes random_plane:   {t['package']:7.2f} s  "
            f"{flops / t['package'] / 1e9:6.1f} GFLOP/s  -> crumple "
            f"{t['package'] / t['crumple']:.2f}x"
        )
    print(
        f"  crumple vs loop, same plane: max relative difference {rel.max():.1e} "
        f"({ds.attrs['dtype']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["mlp", "cnn"], default=None)
    parser.add_argument("--skip-package", action="store_true", help="leave out loss-landscapes")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per method")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__} on {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
    )
    print(f"plain float32 matmul 2048^3: {matmul_gflops(device):.1f} GFLOP/s")
    g = torch.Generator().manual_seed(0)
    if args.only in (None, "mlp"):
        x = torch.randn(2048, 784, generator=g)
        y = torch.randint(0, 10, (2048,), generator=g)
        case("MLP 784-256-256-10", mlp(), x, y, 21, 512, device, args.skip_package, args.repeats)
    if args.only in (None, "cnn"):
        x = torch.randn(512, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (512,), generator=g)
        case(
            "CNN 3->16->32 + linear", cnn(), x, y, 11, 128, device, args.skip_package, args.repeats
        )


if __name__ == "__main__":
    main()
