"""crumple against a plain per-point loop on the same device (a CUDA GPU by default), on a
CIFAR-shaped ResNet-20 and on the tiny GPT-2 language model of crumple.examples.tinylm.

ResNet-20 (He et al. 2016, option-A shortcuts, 269,722 parameters, random init): 10,000
random 3 x 32 x 32 images of 10 classes, a 51 x 51 grid on ``cr.Plane.random(model,
seed=0)``, cross entropy. The language model: random sequences of its corpus, the loss the
model computes (``cr.surface(model, "model", ...)``: the mean over all target tokens), the
same grid. The loop is written as a user would: for each grid point, write ``origin +
a * d1 + b * d2`` into a copy of the model's weights in place, run every batch under
``torch.no_grad`` in eval mode, and take the exact mean (batches weighed by their samples,
or for the language model the sum of the per-token cross entropies over the count of target
tokens in all batches). CUDA is synchronized before each clock reading.

Both methods run in this process, after a 2 x 2 warm-up each (CUDA context, cuDNN), the
methods interleaved over ``--repeats`` runs, the median reported. Plain float32 runs with
TF32 off for matmuls and cuDNN alike (PyTorch leaves it on for cuDNN by default);
``--precision tf32`` turns it on for both methods, ``--precision bf16`` runs the loop under
bfloat16 autocast; either is passed to ``cr.surface(precision=...)``. The project's goal is
crumple at least 10x the loop for these small models on a GPU: the ratio is printed against
it, never asserted. The two surfaces must agree (float32: 1e-4 relative; tf32 1e-2, bf16
5e-2); the script exits non-zero when they do not.

    python benchmarks/gpu.py                          # on a CUDA machine: both models
    python benchmarks/gpu.py --quick --device cpu     # a small run that shows it works

``--quick``: 128 images in batches of 50 and 24 sequences of up to 64 tokens in batches of
10, on a 7 x 7 grid (a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.examples.resnet20 import resnet20

GOAL = 10.0
TOLERANCE = {None: 1e-4, "tf32": 1e-2, "bf16": 5e-2}
# (full, --quick) sizes: samples or sequences, batch size, grid points a side
RESNET = {
    "full": dict(n=10_000, batch_size=1_000, steps=51),
    "quick": dict(n=128, batch_size=50, steps=7),
}
LM = {
    "full": dict(n_sequences=512, length=128, batch_size=64, steps=51),
    "quick": dict(n_sequences=24, length=64, batch_size=10, steps=7),
}


class Skip(Exception):
    """A part that cannot run here (its example or crumple's feature is not there yet)."""


@dataclass
class Case:
    label: str
    model: torch.nn.Module
    loss: Any  # what cr.surface takes: a function or "model"
    data: list
    batch_loss: Callable  # (model copy, batch) -> (summed loss as a float, count)
    steps: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


@contextlib.contextmanager
def arithmetic(precision: str | None, device: torch.device):
    """The loop's arithmetic: bfloat16 autocast for "bf16"; TF32 is set for the whole
    process in main (it is a global switch, for crumple as for the loop)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def loop(case: Case, plane: cr.Plane, grid: cr.Grid, precision, device) -> np.ndarray:
    """The plain way: write each point's weights into a copy of the model, run every batch."""
    work = copy.deepcopy(case.model).eval()
    params = dict(work.named_parameters(remove_duplicate=False))  # tied weights by each name
    d1, d2 = plane.directions
    out = np.empty(grid.shape)
    with torch.no_grad(), arithmetic(precision, device):
        for i, a in enumerate(grid.axes[0]):
            for j, b in enumerate(grid.axes[1]):
                for name, w in plane.origin.items():
                    params[name].copy_(w + float(a) * d1[name] + float(b) * d2[name])
                total = count = 0
                for batch in case.data:
                    loss, n = case.batch_loss(work, batch)
                    total += loss
                    count += n
                out[i, j] = total / count
    return out


def resnet_case(size: dict, device: torch.device) -> Case:
    model = resnet20(seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size["n"], 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (size["n"],), generator=g)
    bs = size["batch_size"]
    data = [(x[k : k + bs].to(device), y[k : k + bs].to(device)) for k in range(0, len(x), bs)]

    def batch_loss(work, batch):
        xb, yb = batch
        return float(F.cross_entropy(work(xb), yb)) * len(xb), len(xb)

    label = (
        f"ResNet-20 ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{size['n']:,} random images 3x32x32 in batches of {bs}, cross entropy"
    )
    return Case(label, model, F.cross_entropy, data, batch_loss, size["steps"])


def lm_case(size: dict, device: torch.device) -> Case:
    try:
        from crumple.examples import tinylm

        model = tinylm.model(seed=0).to(device)
        batches = tinylm.batches(
            n_sequences=size["n_sequences"],
            length=size["length"],
            batch_size=size["batch_size"],
            seed=0,
        )
    except (ImportError, AttributeError, cr.CrumpleError) as e:
        raise Skip(f"crumple.examples.tinylm is not available: {type(e).__name__}: {e}") from e
    data = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def batch_loss(work, batch):
        logits = work(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels.flatten(), reduction="sum"
        )  # ignore_index is -100
        return float(loss), int((labels != -100).sum())

    targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    label = (
        f"tiny GPT-2 LM ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{size['n_sequences']} sequences of up to {size['length']} tokens in batches of "
        f"{size['batch_size']} ({targets:,} target tokens), the model's loss"
    )
    return Case(label, model, "model", data, batch_loss, size["steps"])


def crumple_surface(case, plane, grid, device, options) -> Any:
    return cr.surface(
        case.model, case.loss, case.data, plane, grid, device=str(device), progress=False, **options
    )


def compare(case: Case, args, device: torch.device, options: dict) -> bool:
    """Time both methods on one case and print the figures; True when they agree."""
    plane = cr.Plane.random(case.model.cpu(), seed=0).to(device)  # drawn on the CPU: the same
    case.model.to(device)  # plane on every device
    steps = args.steps or case.steps
    axis = np.linspace(-1, 1, steps)
    grid, small = cr.Grid(axis, axis), cr.Grid(axis[:2], axis[:2])
    precision = options.get("precision")
    methods = {
        "crumple": lambda g: crumple_surface(case, plane, g, device, options),
        "loop": lambda g: loop(case, plane, g, precision, device),
    }
    try:
        methods["crumple"](small)
    except Exception as e:
        if case.loss != "model":
            raise
        raise Skip(f'cr.surface(model, "model", ...) failed: {type(e).__name__}: {e}') from e
    methods["loop"](small)
    times: dict[str, list[float]] = {m: [] for m in methods}
    results = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            gc.collect()
            results[name], seconds = timed(lambda fn=fn: fn(grid), device)
            times[name].append(seconds)
    ds, looped = results["crumple"], results["loop"]
    t = {m: statistics.median(v) for m, v in times.items()}
    ratio = t["loop"] / t["crumple"]
    rel = relative_difference(ds.loss.values, looped)
    tolerance = TOLERANCE[precision]
    print(f"\n{case.label}")
    print(f"  grid {steps} x {steps} on cr.Plane.random(model, seed=0), {describe(precision)}")
    print(f"  device: {device_name(device)}")
    reason = ds.attrs.get("strategy_reason", "asked for")
    print(
        f"  crumple:        {t['crumple']:9.2f} s  strategy {ds.attrs['strategy']}, "
        f"{ds.attrs['points_per_call']} point(s) per call ({reason})"
    )
    batches = f"batches of {ds.attrs['batch_size']}" if "batch_size" in ds.attrs else "batches"
    print(f"                  ({batches}: {ds.attrs['batching']}; the loop: the data's own)")
    print(f"  per-point loop: {t['loop']:9.2f} s")
    met = "met" if ratio >= GOAL else "not met"
    print(f"  ratio: crumple {ratio:.2f}x the loop (goal >= {GOAL:.0f}x on a GPU: {met})")
    verdict = "agree" if rel <= tolerance else "DISAGREE"
    print(f"  max relative difference {rel:.1e} (tolerance {tolerance:.0e}): {verdict}")
    return rel <= tolerance


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest |a - b| / |b|; inf where one is finite and the other not."""
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    finite = np.isfinite(b)
    if not finite.any():
        return 0.0
    return float(np.max(np.abs(a[finite] - b[finite]) / np.abs(b[finite])))


def describe(precision: str | None) -> str:
    return {
        None: "float32 (TF32 off)",
        "tf32": "float32 with TF32 matmuls and convolutions",
        "bf16": "bfloat16 autocast",
    }[precision]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    return f"{device} ({cpu}, {torch.get_num_threads()} threads)"


def crumple_options(precision: str | None, device: torch.device) -> dict:
    """``{"precision": ...}`` when one is asked for and crumple takes it, else ``{}``."""
    if precision is None:
        return {}
    net = torch.nn.Linear(2, 1).to(device)
    data = (torch.ones(4, 2, device=device), torch.zeros(4, 1, device=device))
    try:
        cr.surface(
            net, F.mse_loss, data, cr.Plane.random(net), cr.Grid([0.0], [0.0]),
            device=str(device), precision=precision, progress=False,
        )  # fmt: skip
    except cr.CrumpleError as e:
        if "precision" not in str(e):
            raise
        why = "not available yet in" if "unknown option" in str(e) else "refused here by"
        print(f"--precision {precision}: {why} crumple.surface ({e});")
        print("  both methods run in plain float32 instead")
        return {}
    return {"precision": precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"default here: {default}")
    parser.add_argument("--quick", action="store_true", help="small data, 7 x 7 grid")
    parser.add_argument("--only", choices=["resnet", "lm"], help="one model only")
    parser.add_argument("--precision", choices=["bf16", "tf32"], help="passed to cr.surface")
    parser.add_argument("--steps", type=int, help="grid points a side (default 51, quick 7)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs, median")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device (try --device cpu)")
    options = crumple_options(args.precision, device)
    tf32 = options.get("precision") == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    size = "quick" if args.quick else "full"
    print(f"torch {torch.__version__}, crumple {cr.__version__}, {device_name(device)}")
    builders = {"resnet": lambda: resnet_case(RESNET[size], device)}
    builders["lm"] = lambda: lm_case(LM[size], device)
    agree, skipped = True, []
    for name, build in builders.items():
        if args.only not in (None, name):
            continue
        try:
            agree &= compare(build(), args, device, options)
        except Skip as e:
            print(f"\n{name}: SKIPPED: {e}")
            skipped.append(name)
    if not agree:
        sys.exit("crumple and the loop disagree (see above)")
    if args.only and skipped:
        sys.exit(f"--only {args.only} was skipped")


if __name__ == "__main__":
    main()
