"""crumple's Hessian against PyHessian (0.1) on an MLP and a CNN, measured side by side in one run.

Models: the MLP 784-256-256-10 (ReLU) on 2,048 Gaussian inputs with random labels (batches
of 512) and the CNN of benchmarks/general.py (3x3 convolutions 3->16->32 with ReLU, then a
linear head) on 512 inputs of 3x32x32 (batches of 128), both `crumple.examples.zoo` as
general.py builds them, float32, cross-entropy. crumple takes the DataLoader; PyHessian
takes the whole data as one batch (`data=(x, y)`, its fastest mode: it keeps the graph of
one `backward(create_graph=True)` and each product is one backward through it).

1. Top eigenvalue: the reference is crumple's `eigen(k=1, tol=1e-10)`. Each tool then runs
   at tol 1e-3, tightened tenfold until its value is within 1e-3 (relative) of the
   reference: crumple `eigen(k=1)` (Lanczos, scipy's eigsh) and PyHessian
   `eigenvalues(top_n=1, maxIter=500)` (power iteration; its tol bounds the relative change
   between two iterations). PyHessian runs once at 1e-7: its run at a looser tol is a prefix
   of that one (same seed), so each tol's stop, value and time are read off as it goes, and
   it is stopped where the first accurate tol stops. Time (the chosen tol only, set-up
   included), Hessian-vector products (HVPs), relative error. Goal: PyHessian / crumple
   time >= 2x.
2. Trace, 100 Rademacher probes: crumple `trace(probes=100)` against PyHessian
   `trace(maxIter=100, tol=-inf)`: its stopping test (relative change of the running mean
   below tol, default 1e-3) never passes, so that it, too, takes all 100 probes.
3. One HVP: crumple `H @ v` cold (a fresh `Hessian`, the first product; the best of two at
   least, so not the process's first torch.func call) and warm (later products, which reuse
   the pullbacks where they are kept) against one gradient (plain `loss.backward()` over the
   same batches) and PyHessian's product on its kept graph; the two tools' products are
   compared. Goal: a warm HVP within 3x a gradient.
4. Eight vectors: `H @ V` with V of shape (n, 8), and the same eight under one vmap
   (`Hessian._products`), per vector, against eight `H @ v` one at a time; and `H @ V` of
   9 vectors on a fresh operator, where crumple times one against eight under vmap (as the
   first block of `trace` does) and keeps the faster way.

One thread (`--threads`): on this shared 2-core machine, two threads under a load of ~3
made OpenMP stall (a warm MLP product: 822 ms with two threads, 123 ms with one). Timings:
the best of `--repeats` (3), the tools in turn; on the CNN (products of ~2 s) the
eigenvalue, trace and eight-vector timings are single runs. A full run takes ~28 minutes
here (the CNN's 100-probe traces and PyHessian's ~300 power iterations); `--quick` (512 MLP
inputs, 128 CNN inputs, 20 probes, single runs) ~3; `--models mlp` the MLP only (~2).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import os
import time
import warnings
from contextlib import contextmanager, suppress

import numpy as np
import torch

from crumple.examples import zoo
from crumple.hessian import Hessian, eigen, trace

ACCURACY = 1e-3  # relative accuracy asked of the top eigenvalue
TOLS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
POWER_ITERATIONS = 500  # PyHessian's maxIter for an eigenvalue
GOAL_EIGEN, GOAL_HVP = 2.0, 3.0
SIZES = {"mlp": dict(n=2048, batch_size=512), "cnn": dict(n=512, batch_size=128)}
QUICK = {"mlp": dict(n=512, batch_size=512), "cnn": dict(n=128, batch_size=128)}
LABELS = {"mlp": "MLP 784-256-256-10", "cnn": "CNN 3->16->32 + linear"}
SINGLE_RUN = {"cnn"}  # long timings run once


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def interleaved(runs: dict, repeats: int) -> dict:
    """``{name: (last result, least seconds)}`` of ``repeats`` rounds that run each of
    ``runs`` in turn, so that load on the machine hits them alike."""
    out = {name: (None, math.inf) for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            result, seconds = timed(fn)
            out[name] = (result, min(out[name][1], seconds))
    return out


def best(fn, repeats: int):
    """The last result and the least seconds of ``repeats`` runs."""
    return interleaved({0: fn}, repeats)[0]


def release(model) -> None:
    """Drop the gradients PyHessian leaves on the model (each holds its double-backward
    graph in a reference cycle with the weights)."""
    for p in model.parameters():
        p.grad = None
    gc.collect()


class Stop(Exception):
    """Raised from inside PyHessian's power iteration where the chosen tol stops it."""


@contextmanager
def counted_pyhessian(watch=None):
    """PyHessian, its products counted (its single-batch mode calls this one function);
    ``watch(v, Hv)`` is called after each."""
    module = importlib.import_module("pyhessian.hessian")  # the package's name is the class
    original, count = module.hessian_vector_product, [0]

    def counting(gradients, params, v):
        count[0] += 1
        product = original(gradients, params, v)
        if watch is not None:
            watch(v, product)
        return product

    module.hessian_vector_product = counting
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*create_graph=True.*")
            yield module.hessian, count
    finally:
        module.hessian_vector_product = original


def pyhessian_eigen(model, loss_fn, data, reference: float, tols) -> dict:
    """PyHessian's ``eigenvalues(top_n=1)`` at the loosest of ``tols`` that gives ACCURACY.

    One run at the tightest tol: a looser tol's run is a prefix of it (same seed, same
    iterates), stopping after the first product ``i`` whose Rayleigh quotient changed by
    less than tol (relative) and returning the previous one. Each product's quotient is
    recorded as PyHessian computes it; the run is stopped where the loosest accurate tol
    would stop it, and timed (set-up included) to that point."""
    from pyhessian.utils import group_product

    values, pending, out = [], list(tols), {"path": []}
    start = time.perf_counter()

    def watch(v, product):
        values.append(group_product(product, v).cpu().item())
        if len(values) < 2:
            return
        last, now = values[-2], values[-1]
        while pending and abs(last - now) / (abs(last) + 1e-6) < pending[0]:
            tol, error = pending.pop(0), abs(last - reference) / abs(reference)
            out.update(tol=tol, value=last, products=len(values), error=error)
            out["seconds"] = time.perf_counter() - start
            out["path"].append(f"{tol:.0e}: {len(values)} HVPs, error {error:.1e}")
            if error <= ACCURACY:
                raise Stop

    with counted_pyhessian(watch) as (hessian, _):
        torch.manual_seed(1)
        with suppress(Stop):
            hessian(model, loss_fn, data=data, cuda=False).eigenvalues(
                maxIter=POWER_ITERATIONS, tol=tols[-1], top_n=1
            )
    release(model)
    if pending and out.get("error", 1.0) > ACCURACY:  # maxIter reached: its last value
        error = abs(values[-1] - reference) / abs(reference)
        out.update(tol=tols[-1], value=values[-1], products=len(values), error=error)
        out["seconds"] = time.perf_counter() - start
    return out


def ladder(run, reference: float) -> dict:
    """``run(tol) -> (value, products)`` at each tol of TOLS, loosest first, up to the first
    within ACCURACY of ``reference``."""
    for tol in TOLS:
        (value, products), seconds = timed(lambda t=tol: run(t))
        error = abs(value - reference) / abs(reference)
        if error <= ACCURACY:
            break
    return dict(tol=tol, value=value, products=products, seconds=seconds, error=error)


def top_eigenvalue(case, repeats: int) -> dict:
    model, loss_fn, loader = case
    data = loader.dataset.tensors

    def ours(tol):
        found = eigen(model, loss_fn, loader, k=1, tol=tol, seed=1)
        return float(found.eigenvalues[0]), found.products

    (reference, products), seconds = timed(lambda: ours(1e-10))
    out = {"reference": reference, "reference_products": products, "reference_s": seconds}
    out["crumple"] = ladder(ours, reference)
    out["pyhessian"] = pyhessian_eigen(model, loss_fn, data, reference, TOLS)
    chosen = out["crumple"]["tol"], (out["pyhessian"]["tol"],)
    for _ in range(repeats - 1):  # both again at their tol, in turn; the best time counts
        seconds = timed(lambda: ours(chosen[0]))[1]
        out["crumple"]["seconds"] = min(out["crumple"]["seconds"], seconds)
        seconds = pyhessian_eigen(model, loss_fn, data, reference, chosen[1])["seconds"]
        out["pyhessian"]["seconds"] = min(out["pyhessian"]["seconds"], seconds)
    return out


def traces(case, probes: int, repeats: int) -> dict:
    model, loss_fn, loader = case
    x, y = loader.dataset.tensors

    def theirs():
        with counted_pyhessian() as (hessian, count):
            torch.manual_seed(0)
            values = hessian(model, loss_fn, data=(x, y), cuda=False).trace(
                maxIter=probes, tol=-math.inf
            )
        release(model)
        assert len(values) == probes == count[0], (len(values), count[0])
        return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(probes))

    def ours():
        return trace(model, loss_fn, loader, probes=probes, seed=0)

    timings = interleaved({"crumple": ours, "pyhessian": theirs}, repeats)
    (found, ours_s), ((estimate, stderr), theirs_s) = timings["crumple"], timings["pyhessian"]
    return {
        "crumple": dict(estimate=found.estimate, stderr=found.stderr, seconds=ours_s),
        "pyhessian": dict(estimate=estimate, stderr=stderr, seconds=theirs_s),
    }


def gradient(model, loss_fn, loader) -> None:
    """The plain gradient of the mean loss: batch means weighed by their share."""
    model.zero_grad(set_to_none=True)
    total = len(loader.dataset)
    for x, y in loader:
        (loss_fn(model(x), y) * (len(x) / total)).backward()


def one_product(case, repeats: int) -> dict:
    model, loss_fn, loader = case
    x, y = loader.dataset.tensors
    colds = []
    for _ in range(max(repeats, 2)):
        H = Hessian(model, loss_fn, loader)
        v = torch.randn(len(H), generator=torch.Generator().manual_seed(0))
        _, seconds = timed(lambda H=H, v=v: H @ v)
        colds.append(seconds)
    hv, warm = best(lambda: H @ v, repeats)
    kept = getattr(H, "_pulls", None) is not None
    _, grad_s = best(lambda: gradient(model, loss_fn, loader), repeats)
    release(model)
    other, theirs_s, build_s = pyhessian_product(model, loss_fn, (x, y), H.unflatten(v), repeats)
    out = dict(parameters=len(H), cold=min(colds), warm=warm, kept=kept, gradient=grad_s)
    out.update(pyhessian=theirs_s, pyhessian_build=build_s)
    out["difference"] = float((hv - other).norm() / hv.norm())
    return out


def pyhessian_product(model, loss_fn, data, v: dict, repeats: int):
    """PyHessian's product with ``v`` on its kept graph (flat), its best seconds, and the
    seconds of its set-up (forward and ``backward(create_graph=True)``)."""
    with counted_pyhessian() as (hessian, _):
        theirs, build_s = timed(lambda: hessian(model, loss_fn, data=data, cuda=False))
        vs = [v[n] for n, p in model.named_parameters() if p.requires_grad]
        product, seconds = best(
            lambda: torch.autograd.grad(theirs.gradsH, theirs.params, vs, retain_graph=True),
            repeats,
        )
    release(model)
    return torch.cat([t.reshape(-1) for t in product]), seconds, build_s


def eight_vectors(case, repeats: int) -> dict:
    H = Hessian(*case)
    V = torch.randn(len(H), 8, generator=torch.Generator().manual_seed(0))
    H @ V[:, 0]  # keeps the pullbacks where they fit
    singles, single_s = best(lambda: torch.stack([H @ V[:, j] for j in range(8)], 1), repeats)
    together, together_s = best(lambda: H @ V, repeats)
    out = {"single": single_s / 8, "matmul": together_s / 8}
    out["difference"] = float((together - singles).norm() / singles.norm())
    if hasattr(H, "_products"):
        mapped, mapped_s = best(lambda: H._products(V.T).T, repeats)
        out["vmap"] = mapped_s / 8
        difference = float((mapped - singles).norm() / singles.norm())
        out["difference"] = max(out["difference"], difference)
    fresh = Hessian(*case)  # what H @ (n, 10) on a fresh operator (as trace's first) picks:
    # the first call times one vector against 8 under vmap when it has more than 9
    _, seconds = timed(lambda: fresh @ torch.cat([V, V[:, :2]], 1))
    out["fresh10"], out["choice"] = seconds / 10, getattr(fresh, "_per_call", None)
    return out


def ratio(theirs: float, ours: float) -> str:
    return f"{theirs / ours:.2f}x"


def print_case(label: str, case, r: dict, probes: int) -> None:
    p, e, t = r["product"], r["eigen"], r["trace"]
    ours, theirs = e["crumple"], e["pyhessian"]
    print(
        f"\n{label}: {p['parameters']:,} parameters, {len(case.data.dataset):,} inputs in batches "
        f"of {case.data.batch_size}; crumple's pullbacks {'kept' if p['kept'] else 'NOT kept'}"
    )
    print(f"  {'':<26}{'crumple':>24}{'PyHessian':>24}{'PyH/crumple':>13}")
    print(
        f"  {'top eigenvalue  seconds':<26}{ours['seconds']:>24.2f}{theirs['seconds']:>24.2f}"
        f"{ratio(theirs['seconds'], ours['seconds']):>13}"
    )
    for key, name, fmt in (("products", "HVPs", "d"), ("tol", "at tol", ".0e")):
        print(f"  {'':<16}{name:<10}{ours[key]:>24{fmt}}{theirs[key]:>24{fmt}}")
    print(f"  {'':<16}{'rel error':<10}{ours['error']:>24.1e}{theirs['error']:>24.1e}")
    print(f"  {'':<16}PyHessian by tol: {'; '.join(theirs['path'])}")
    print(
        f"  {'':<16}reference {e['reference']:.6g} (crumple tol 1e-10: "
        f"{e['reference_products']} HVPs, {e['reference_s']:.1f} s)"
    )
    a, b = t["crumple"], t["pyhessian"]
    print(
        f"  {f'trace ({probes} probes) s':<26}{a['seconds']:>24.2f}{b['seconds']:>24.2f}"
        f"{ratio(b['seconds'], a['seconds']):>13}"
    )
    estimates = [f"{x['estimate']:.5g} +- {x['stderr']:.2g}" for x in (a, b)]
    print(f"  {'':<16}{'estimate':<10}{estimates[0]:>24}{estimates[1]:>24}")
    print(
        f"  {'one HVP, warm  ms':<26}{p['warm'] * 1e3:>24.1f}{p['pyhessian'] * 1e3:>24.1f}"
        f"{ratio(p['pyhessian'], p['warm']):>13}"
    )
    print(
        f"  {'one HVP, cold  ms':<26}{p['cold'] * 1e3:>24.1f}"
        f"{(p['pyhessian_build'] + p['pyhessian']) * 1e3:>24.1f}"
        f"{ratio(p['pyhessian_build'] + p['pyhessian'], p['cold']):>13}"
        "   (PyHessian: set-up + one)"
    )
    g = p["gradient"]
    print(
        f"  {'one gradient  ms':<26}{g * 1e3:>24.1f}   HVP / gradient: warm "
        f"{p['warm'] / g:.2f}x, cold {p['cold'] / g:.2f}x, PyHessian {p['pyhessian'] / g:.2f}x"
    )
    print(f"  {'':<16}the two tools' Hv differ by {p['difference']:.1e} (relative)")
    b8 = r["eight"]
    line = f"one at a time {b8['single'] * 1e3:.1f}, H @ V {b8['matmul'] * 1e3:.1f}"
    if "vmap" in b8:
        line += f", one vmap {b8['vmap'] * 1e3:.1f}"
    print(f"  {'8 vectors  ms per vector':<26}  {line} (max difference {b8['difference']:.1e})")
    print(
        f"  {'':<28}H @ V of 10 on a fresh operator {b8['fresh10'] * 1e3:.1f}, then "
        f"{b8['choice']} vector(s) per call chosen"
    )


def goals(results: dict) -> None:
    print("\ngoals")
    for name, r in results.items():
        e, p = r["eigen"], r["product"]
        speedup = e["pyhessian"]["seconds"] / e["crumple"]["seconds"]
        accurate = e["crumple"]["error"] <= ACCURACY and e["pyhessian"]["error"] <= ACCURACY
        print(
            f"  {name}: top eigenvalue {speedup:.2f}x PyHessian (goal >= {GOAL_EIGEN:.0f}x): "
            f"{'met' if speedup >= GOAL_EIGEN and accurate else 'MISSED'}"
            f"{'' if accurate else ' (a tool missed 1e-3 accuracy at every tol)'}"
        )
        hvp = p["warm"] / p["gradient"]
        print(
            f"  {name}: warm HVP {hvp:.2f}x a gradient (goal <= {GOAL_HVP:.0f}x): "
            f"{'met' if hvp <= GOAL_HVP else 'MISSED'}; cold {p['cold'] / p['gradient']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, the best taken")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see above)")
    parser.add_argument("--quick", action="store_true", help="smaller data, 20 probes, 1 run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    if unknown := sorted(set(names) - set(SIZES)):
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(SIZES)}")
    probes = 20 if args.quick else 100
    print(
        f"torch {torch.__version__}, float32, {torch.get_num_threads()} thread(s); best of "
        f"{1 if args.quick else args.repeats} run(s) (eigenvalue, trace and 8-vector timings "
        f"on the CNN: 1 run); PyHessian single-batch mode"
    )
    print("load average (1, 5, 15 min) at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    results, began = {}, time.perf_counter()
    for name in names:
        case = getattr(zoo, name)(**(QUICK if args.quick else SIZES)[name], dtype=torch.float32)
        repeats = 1 if args.quick else args.repeats
        long = 1 if name in SINGLE_RUN else repeats
        results[name] = r = {
            "product": one_product(case, repeats),
            "eight": eight_vectors(case, long),
            "eigen": top_eigenvalue(case, long),
            "trace": traces(case, probes, long),
        }
        print_case(LABELS[name], case, r, probes)
    goals(results)
    print(
        f"\nwhole run: {time.perf_counter() - began:.0f} s; load average at the end: "
        "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )


if __name__ == "__main__":
    main()
