"""crumple against the classic per-point loop and the `loss-landscapes` package, on an MLP
and a small CNN, measured side by side in one run.

MLP 784-256-256-10 on 2,048 inputs over a 21 x 21 grid; CNN (3x3 convolutions 3->16->32 with
ReLU, then a linear head) on 512 inputs of 3x32x32 over an 11 x 11 grid. Each method
evaluates a random filter-normalized plane. Targets: on the MLP at least 2.5x the loop and
the package; on the CNN never slower than the loop. Also prints the achieved GFLOP/s
(nominal forward FLOPs of every grid point over the wall time) beside a plain matmul's.

Each method runs in a fresh process: set-up, a 2 x 2 warm-up, a full garbage collection (a
collection of torch's ~160,000 objects takes about 0.1 s and would otherwise land in whichever
timed run the set-up's garbage triggers it in), then the timed run.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import crumple as cr
from crumple.examples import zoo


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


def setup(name: str, device):
    """The model, data, plane, grid and loader of one case, the same in every process."""
    torch.manual_seed(0)  # loss-landscapes draws its directions from the global generator
    case, steps = (zoo.mlp(), 21) if name == "mlp" else (zoo.cnn(), 11)
    model, batch_size = case.model.to(device), case.data.batch_size
    x, y = (t.to(device) for t in case.data.dataset.tensors)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    plane = cr.Plane.random(model, normalize="filter", seed=0)
    axis = np.linspace(-1, 1, steps)
    return model, x, y, loader, plane, cr.Grid(axis, axis), steps, batch_size


def measure(method: str, name: str, device, out: str) -> None:
    """One method on one case, in this (fresh) process: a small warm-up, then the timed run;
    prints the seconds (and the strategy) as JSON and saves the values to ``out``."""
    model, x, y, loader, plane, grid, steps, _ = setup(name, device)
    small = cr.Grid(grid.axes[0][:2], grid.axes[1][:2])
    run = {
        "crumple": lambda g: cr.surface(model, F.cross_entropy, loader, plane, g),
        "loop": lambda g: classic_loop(model, loader, plane, g, device),
        "package": lambda g: package(model, x, y, len(g.axes[0])),
    }[method]
    run(small)
    gc.collect()  # as timeit does: a collection owed by the set-up is not the method's time
    result, seconds = timed(lambda: run(grid))
    values = result.loss.values if method == "crumple" else np.asarray(result)
    np.save(out, values)
    facts = {"seconds": seconds}
    if method == "crumple":
        facts |= {k: result.attrs[k] for k in ("strategy", "points_per_call", "dtype")}
    print(json.dumps(facts))


def case(name, label, device, skip_package, repeats):
    import subprocess
    import sys
    import tempfile

    model, x, *_, grid, steps, batch_size = setup(name, device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    flops = counter.get_total_flops() * grid.size
    methods = ["crumple", "loop"] + ([] if skip_package else ["package"])
    times = {m: [] for m in methods}
    facts, values = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):  # interleaved, so that load on the machine hits all alike
            for m in methods:
                out = f"{tmp}/{m}.npy"
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--measure",
                        m,
                        "--only",
                        name,
                        "--device",
                        str(device),
                        "--out",
                        out,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                facts[m] = json.loads(done.stdout.strip().splitlines()[-1])
                times[m].append(facts[m]["seconds"])
                values[m] = np.load(out)
    t = {m: float(np.median(v)) for m, v in times.items()}
    rel = np.abs(values["crumple"] - values["loop"]) / np.abs(values["loop"])
    c = facts["crumple"]
    print(
        f"\n{label}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(x)} inputs in batches of {batch_size}, grid {steps} x {steps}, "
        f"{flops / grid.size / 1e9:.2f} GFLOP per point; median of {repeats} interleaved runs, "
        "each method in a fresh process"
    )
    print(
        f"  crumple ({c['strategy']}, {c['points_per_call']} point(s) per call): "
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
    print(f"  crumple vs loop, same plane: max relative difference {rel.max():.1e} ({c['dtype']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["mlp", "cnn"], default=None)
    parser.add_argument("--skip-package", action="store_true", help="leave out loss-landscapes")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per method")
    parser.add_argument("--measure", choices=["crumple", "loop", "package"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.measure:
        measure(args.measure, args.only, device, args.out)
        return
    print(
        f"torch {torch.__version__} on {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
    )
    print(f"plain float32 matmul 2048^3: {matmul_gflops(device):.1f} GFLOP/s")
    if args.only in (None, "mlp"):
        case("mlp", "MLP 784-256-256-10", device, args.skip_package, args.repeats)
    if args.only in (None, "cnn"):
        case("cnn", "CNN 3->16->32 + linear", device, args.skip_package, args.repeats)


if __name__ == "__main__":
    main()
