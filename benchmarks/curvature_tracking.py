"""What tracking the top Hessian eigenvalue during training costs (`crumple.hessian.Tracking`
given to `crumple.Recorder(curvature=...)`), on the edge-of-stability run of
`crumple.examples.eos`: full-batch gradient descent (lr 0.05) on the MLP 64-200-200-10 (tanh,
55,210 parameters) with the squared loss on the first 1,000 digits, float32, the Hessian
taken on the same 1,000 digits.

1. Overhead: the same `--steps` GD steps with a Recorder keeping weights every 100 steps,
   without curvature (training alone) and with Tracking every 10, 50 and 100 steps
   (lambda_max only: directional=False), every 50 with directional=True and trace=10, and
   every 50 cold (warm=False). Seconds, their ratio to training alone, measurements, mean
   Hessian-vector products (HVPs) per measurement (the `products` column of
   `rec.sharpness()`: all of a measurement's products, directional and trace included).
   The configurations run in turn, `--repeats` rounds; the least seconds count.
2. Warm against cold start (every 50, from the runs of 1): mean HVPs and seconds, and the
   largest relative difference of lambda_max between the two (both to the default relative
   residual, 1e-4 in float32).
3. Against what a user would write by hand, at the same steps (every 50, the weights kept by
   a run of training alone, replayed one measurement at a time, the methods in turn):
   Tracking's measurement; a power iteration on torch.func HVPs (`jvp` of `grad`, the
   torch.func recipe), started from the previous step's vector and run to the same relative
   residual |Hv - lambda v| / |lambda| (at most `--most-power` HVPs); and
   `crumple.hessian.eigen(model, loss_fn, data, k=1)` (scipy's eigsh, a cold start and a
   fresh operator each time). Seconds and HVPs per measurement, ratios to Tracking.

A benchmark, not a test: nothing is asserted. `--threads` defaults to 1: on this shared
2-core machine two threads under load make OpenMP stall (see benchmarks/hessian.py).

    python benchmarks/curvature_tracking.py [--steps 1000] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings

import numpy as np
import torch
from torch.func import functional_call, grad, jvp

import crumple as cr
from crumple.examples.eos import LR, digits, mlp, squared_loss
from crumple.hessian import Tracking, eigen

TOL = 1e-4  # the default relative residual in float32 (crumple.hessian.spectrum)
SNAPSHOTS = 100  # the Recorder's every (weights kept)
REPLAY_EVERY = 50  # the measured steps of part 3
CONFIGS = {
    "training alone": None,
    "every 10": dict(every=10, directional=False),
    "every 50": dict(every=50, directional=False),
    "every 100": dict(every=100, directional=False),
    "every 50 +dir +trace 10": dict(every=50, directional=True, trace=10),
    "every 50 cold": dict(every=50, directional=False, warm=False),
}


def train(data, steps: int, config: dict | None, snapshots: int = SNAPSHOTS):
    """Full-batch GD as `crumple.examples.eos.train` runs it: seconds and the Recorder."""
    x, t = data
    model = mlp(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    tracking = None if config is None else Tracking(squared_loss, data, **config)
    began = time.perf_counter()
    with torch.no_grad():
        start = squared_loss(model(x), t)
    with cr.Recorder(model, every=snapshots, curvature=tracking, loss=start) as recorder:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = squared_loss(model(x), t)
            loss.backward()
            optimizer.step()
            recorder.record(loss=loss.detach())
    return time.perf_counter() - began, recorder


def overhead(data, steps: int, repeats: int) -> dict:
    """``{name: (least seconds, sharpness Dataset or None)}``, the configurations in turn."""
    out = {name: (math.inf, None) for name in CONFIGS}
    for _ in range(repeats):
        for name, config in CONFIGS.items():
            seconds, recorder = train(data, steps, config)
            out[name] = (min(out[name][0], seconds), recorder.sharpness())
    return out


class PowerIteration:
    """What a user writes with torch.func: ``hvp(v) = jvp(grad(loss), w, v)``, power
    iteration from the previous vector until ``|Hv - lambda v| / |lambda| <= tol``."""

    def __init__(self, model, data, tol: float, most: int) -> None:
        self.model, self.data, self.tol, self.most = model, data, tol, most
        self.vector = None

    def __call__(self):
        x, t = self.data
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        names = list(params)
        sizes = [params[n].numel() for n in names]

        def loss(p):
            return squared_loss(functional_call(self.model, p, (x,)), t)

        gradient = grad(loss)

        def hvp(v):
            parts = dict(zip(names, v.split(sizes), strict=True))
            tangents = {n: parts[n].view_as(params[n]) for n in names}
            product = jvp(gradient, (params,), (tangents,))[1]
            return torch.cat([product[n].reshape(-1) for n in names])

        if self.vector is None:  # the first: Tracking's random start
            generator = torch.Generator().manual_seed(0)
            self.vector = torch.randn(sum(sizes), generator=generator, dtype=torch.float64)
        v = self.vector.to(params[names[0]])
        v = v / v.norm()
        for products in range(1, self.most + 1):
            w = hvp(v)
            value = float(v @ w)
            residual = float((w - value * v).norm()) / max(abs(value), 1e-300)
            if residual <= self.tol or products == self.most:
                break
            v = w / w.norm()
        self.vector = v
        return value, products, residual


def replay(data, steps: int, most_power: int) -> dict:
    """Part 3: the weights every REPLAY_EVERY steps of training alone, each method timed on
    each of them in turn (the warm starts carried from one measurement to the next)."""
    _, recorder = train(data, steps, None, snapshots=REPLAY_EVERY)
    trajectory = recorder.trajectory
    model = mlp(0)
    tracking = Tracking(squared_loss, data, every=REPLAY_EVERY, directional=False)
    tracking.start(model)
    power = PowerIteration(model, data, TOL, most_power)
    rows = {"Tracking": [], "power iteration": [], "eigen(k=1)": []}
    for k, step in enumerate(trajectory.steps):
        if step % REPLAY_EVERY:
            continue  # the final weights, kept off the grid
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(trajectory.snapshot(k)[name])
        began = time.perf_counter()
        row = tracking.after_step(model, step, None)
        seconds = time.perf_counter() - began
        rows["Tracking"].append((step, row["lambda_max"], row["products"], seconds))
        began = time.perf_counter()
        value, products, residual = power()
        seconds = time.perf_counter() - began
        rows["power iteration"].append((step, value, products, seconds, residual))
        began = time.perf_counter()
        found = eigen(model, squared_loss, data, k=1)
        seconds = time.perf_counter() - began
        rows["eigen(k=1)"].append((step, float(found.eigenvalues[0]), found.products, seconds))
    return rows


def mean(values) -> float:
    return statistics.fmean(values) if len(values) else math.nan


def lambda_products(s, config: dict) -> np.ndarray:
    """The HVPs of lambda_max alone in each row: less the trace's probes and the directional
    product (taken where there was an update to measure along)."""
    products = s.products.values.astype(float)
    if config.get("trace"):
        products = products - config["trace"]
    if config.get("directional", True) and "directional" in s:
        products = products - np.isfinite(s.directional.values)
    return products


def print_overhead(results: dict, steps: int) -> None:
    alone = results["training alone"][0]
    print(f"\n1. overhead of tracking, {steps:,} GD steps (best seconds of the rounds)")
    heads = f"{'seconds':>9}{'/ alone':>9}{'measured':>10}{'HVPs/meas':>11}{'lambda HVPs':>13}"
    print(f"  {'':<26}{heads}")
    for name, (seconds, s) in results.items():
        if s is None:
            print(f"  {name:<26}{seconds:>9.2f}{1:>9.2f}{'-':>10}{'-':>11}{'-':>13}")
            continue
        config = CONFIGS[name]
        print(
            f"  {name:<26}{seconds:>9.2f}{seconds / alone:>9.2f}{s.sizes['step']:>10}"
            f"{float(s.products.mean()):>11.1f}{lambda_products(s, config).mean():>13.1f}"
        )
        per = (seconds - alone) / s.sizes["step"]
        print(f"  {'':<26}{'':>9}{'':>9}{'':>10}  {per * 1e3:.0f} ms per measurement over training")
    print(
        "  HVPs/meas: all of a measurement's products (lambda_max, directional, trace); "
        "lambda HVPs: lambda_max's alone"
    )


def print_warm_cold(results: dict) -> None:
    (warm_s, warm), (cold_s, cold) = results["every 50"], results["every 50 cold"]
    alone = results["training alone"][0]
    a, b = warm.lambda_max.values, cold.lambda_max.values
    difference = np.abs(a - b) / np.abs(b)
    print("\n2. warm against cold start, every 50 steps, lambda_max only")
    print(f"  {'':<26}{'HVPs/meas':>11}{'max HVPs':>10}{'seconds':>9}{'overhead s':>12}")
    both = (("warm (previous vector)", warm_s, warm), ("cold (random start)", cold_s, cold))
    for name, seconds, s in both:
        print(
            f"  {name:<26}{float(s.products.mean()):>11.1f}{int(s.products.max()):>10}"
            f"{seconds:>9.2f}{seconds - alone:>12.2f}"
        )
    print(
        f"  cold / warm HVPs {float(cold.products.mean() / warm.products.mean()):.2f}x, "
        f"overhead {(cold_s - alone) / max(warm_s - alone, 1e-9):.2f}x"
    )
    print(
        f"  lambda_max warm vs cold: max relative difference {difference.max():.1e} "
        f"(median {np.median(difference):.1e}) over {len(a)} steps; largest at step "
        f"{int(warm.step.values[difference.argmax()])}"
    )
    worst = max(float(warm.lambda_max_residual.max()), float(cold.lambda_max_residual.max()))
    print(f"  largest recorded residual {worst:.1e} (tol {TOL:g})")


def print_replay(rows: dict, most_power: int) -> None:
    reference = np.array([r[1] for r in rows["eigen(k=1)"]])
    ours = rows["Tracking"]
    ours_s = mean([r[3] for r in ours])
    print(
        f"\n3. against a hand-written alternative, {len(ours)} measurements (steps 0 .. "
        f"{ours[-1][0]}, every {REPLAY_EVERY}; the methods in turn on the same weights)"
    )
    print(
        f"  {'':<22}{'s/meas':>9}{'HVPs/meas':>11}{'ms/HVP':>9}{'s / Tracking':>14}"
        f"{'max |dlambda|/lambda':>22}"
    )
    for name, found in rows.items():
        seconds, products = mean([r[3] for r in found]), mean([r[2] for r in found])
        error = np.abs(np.array([r[1] for r in found]) - reference) / np.abs(reference)
        print(
            f"  {name:<22}{seconds:>9.3f}{products:>11.1f}{seconds / products * 1e3:>9.1f}"
            f"{seconds / ours_s:>13.2f}x{error.max():>22.1e}"
        )
    capped = sum(r[2] >= most_power and r[4] > TOL for r in rows["power iteration"])
    if capped:
        print(f"  power iteration: {capped} time(s) at its cap of {most_power} HVPs, short of tol")
    print("  (the differences are to eigen(k=1)'s value; ms/HVP includes each method's own work)")
    for name in ("power iteration", "eigen(k=1)"):
        found = rows[name]
        per_step = [r[3] / o[3] for r, o in zip(found, ours, strict=True)]
        wins = sum(x < 1 for x in per_step)
        seconds = mean([r[3] for r in found])
        verdict = (
            f"Tracking is {seconds / ours_s:.2f}x faster on average"
            if seconds > ours_s
            else f"{name} is FASTER on average, by {ours_s / seconds:.2f}x"
        )
        print(
            f"  {name}: {verdict}; {name} faster at {wins} of {len(per_step)} steps "
            f"(per-step ratio {min(per_step):.2f}x .. {max(per_step):.2f}x its / Tracking's)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="GD steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of part 1, best taken")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see above)")
    parser.add_argument("--most-power", type=int, default=1000, help="power iteration's cap")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="crumple: the .* eigenvalue did not reach")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"torch {torch.__version__}, float32, {torch.get_num_threads()} torch thread(s) on "
        f"{cpus} CPU(s) ({os.cpu_count()} in the machine); best of {args.repeats} round(s)"
    )
    print(
        f"EOS run: full-batch GD lr {LR:g} on MLP 64-200-200-10 tanh (55,210 parameters), "
        f"1,000 digits, squared loss; Hessian on the same data, tol {TOL:g}"
    )
    print("load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    began = time.perf_counter()
    data = digits()
    warm_up = time.perf_counter()
    train(data, 100, dict(every=10, directional=True, trace=10))  # torch.func paths, once
    print(f"warm-up (100 steps tracked every 10): {time.perf_counter() - warm_up:.1f} s")
    results = overhead(data, args.steps, args.repeats)
    print_overhead(results, args.steps)
    print_warm_cold(results)
    print_replay(replay(data, args.steps, args.most_power), args.most_power)
    print(
        f"\nwhole run: {time.perf_counter() - began:.0f} s; load average at the end: "
        "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )


if __name__ == "__main__":
    main()
