"""crumple against a plain per-point loop on the model types of `crumple.examples.zoo`.

For each model (a ResNet with BatchNorm, a transformer encoder, an LSTM, a language model
with tied embeddings, the MLP and the CNN of benchmarks/general.py), at a float32 size where
one loop run of 15 x 15 points takes a few seconds on one core: `cr.surface` on a random
plane against a loop that writes `origin + a * d1 + b * d2` into a copy of the model and runs
every batch (exact mean: batch means weighed by batch size). Targets: crumple at least 1.0x
the loop on every model, and on the MLP and the CNN no less than the engine before the
strategy registry gave in this same configuration (4.8x and 1.8x, measured 2026-11-28; in
benchmarks/general.py's two-thread 21 x 21 configuration the figures are 6.4x and 1.5x).

One thread (`torch.set_num_threads(1)`). Each method runs in a fresh process (set-up, a
2 x 2 warm-up, a full garbage collection, then the timed run), the methods interleaved,
the median of `--repeats` runs reported. Exits non-zero when the two surfaces differ by
more than 1e-3 (relative) anywhere.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import crumple as cr
from crumple.examples import zoo

# builder keyword arguments: float32, one plain-loop run of 225 points in ~2-8 s on one core
SIZES = {
    "resnet": dict(widths=(16, 32), n=256, batch_size=128),
    "transformer": dict(d_model=32, nhead=4, dim_feedforward=64, n=512, batch_size=128),
    "lstm": dict(hidden=64, n=384, batch_size=128),
    "tied_lm": dict(vocab=256, d_model=64, seq_len=32, n=96, batch_size=32),
    "mlp": dict(n=2048, batch_size=512),
    "cnn": dict(n=128, batch_size=128),
}
TARGETS = {"mlp": 4.8, "cnn": 1.8}  # the rest: at least 1.0
TOLERANCE = 1e-3


def build(name: str) -> zoo.Case:
    return getattr(zoo, name)(**SIZES[name], dtype=torch.float32)


def loop(model, loss_fn, loader, plane, grid) -> np.ndarray:
    """The plain way: write each point's weights into a copy of the model, run the loader."""
    work = copy.deepcopy(model).eval()
    params = dict(work.named_parameters())
    d1, d2 = plane.directions
    out = np.empty(grid.shape)
    with torch.no_grad():
        for i, a in enumerate(grid.axes[0]):
            for j, b in enumerate(grid.axes[1]):
                for name, w in plane.origin.items():
                    params[name].copy_(w + float(a) * d1[name] + float(b) * d2[name])
                total = n = 0
                for x, y in loader:
                    total += float(loss_fn(work(x), y)) * len(x)
                    n += len(x)
                out[i, j] = total / n
    return out


def measure(method: str, name: str, steps: int, out: str) -> None:
    """One method on one model in this (fresh) process; prints the seconds as JSON."""
    model, loss_fn, loader = build(name)
    plane = cr.Plane.random(model, seed=0)
    axis = np.linspace(-1, 1, steps)
    grid = cr.Grid(axis, axis)
    run = {
        "crumple": lambda g: cr.surface(model, loss_fn, loader, plane, g),
        "loop": lambda g: loop(model, loss_fn, loader, plane, g),
    }[method]
    run(cr.Grid(axis[:2], axis[:2]))
    gc.collect()  # a collection owed by the set-up is not the method's time
    start = time.perf_counter()
    result = run(grid)
    facts = {"seconds": time.perf_counter() - start}
    if method == "crumple":
        facts["strategy"] = result.attrs["strategy"]
        result = result.loss.values
    np.save(out, result)
    print(json.dumps(facts))


def compare(name: str, steps: int, repeats: int, warned: set[str]) -> dict:
    """Both methods on one model, interleaved, each run in a fresh process; the warnings
    the runs printed go to ``warned``."""
    methods = ("loop", "crumple")
    times = {m: [] for m in methods}
    facts, values = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for m in methods:
                out = f"{tmp}/{m}.npy"
                command = [sys.executable, __file__, "--measure", m, "--models", name]
                command += ["--steps", str(steps), "--out", out]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{m} on {name} failed:\n{done.stderr}")
                warned.update(
                    f"{m} on {name}: {line.strip()}"
                    for line in done.stderr.splitlines()
                    if "Warning" in line
                )
                facts[m] = json.loads(done.stdout.strip().splitlines()[-1])
                times[m].append(facts[m]["seconds"])
                values[m] = np.load(out)
    model, _, loader = build(name)
    t = {m: float(np.median(v)) for m, v in times.items()}
    rel = np.abs(values["crumple"] - values["loop"]) / np.abs(values["loop"])
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples": len(loader.dataset),
        "loop": t["loop"],
        "crumple": t["crumple"],
        "ratio": t["loop"] / t["crumple"],
        "target": TARGETS.get(name, 1.0),
        "strategy": facts["crumple"]["strategy"],
        "rel": float(rel.max()),
    }


def print_row(r: dict) -> None:
    met = "ok" if r["ratio"] >= r["target"] else "MISSED"
    print(
        f"{r['model']:<12}{r['parameters']:>11,}{r['samples']:>9}{r['loop']:>9.2f}"
        f"{r['crumple']:>10.2f}{r['ratio']:>8.2f}x  >={r['target']:.1f}x {met:<7}"
        f"{r['strategy']:<10}{r['rel']:>9.1e}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SIZES), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per method")
    parser.add_argument("--quick", action="store_true", help="1 repeat on a 5 x 5 grid")
    parser.add_argument("--steps", type=int, default=15, help="grid points a side")
    parser.add_argument("--measure", choices=["crumple", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.models.split(",")
    if unknown := sorted(set(names) - set(SIZES)):
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(SIZES)}")
    if args.measure:
        measure(args.measure, names[0], args.steps, args.out)
        return
    steps, repeats = (5, 1) if args.quick else (args.steps, args.repeats)
    print(
        f"torch {torch.__version__}, float32, 1 thread; grid {steps} x {steps}, random plane; "
        f"median of {repeats} interleaved runs, each method in a fresh process"
    )
    print(
        f"{'model':<12}{'parameters':>11}{'samples':>9}{'loop s':>9}{'crumple s':>10}"
        f"{'ratio':>9}  {'target':<12}{'strategy':<10}{'max rel':>9}"
    )
    warned: set[str] = set()
    worst = 0.0
    for name in names:
        row = compare(name, steps, repeats, warned)
        print_row(row)
        worst = max(worst, row["rel"])
    for line in sorted(warned):
        print(f"warned: {line}")
    if worst > TOLERANCE:
        sys.exit(f"crumple and the loop differ by {worst:.1e} (relative) > {TOLERANCE:.0e}")


if __name__ == "__main__":
    main()
