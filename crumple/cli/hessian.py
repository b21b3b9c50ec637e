"""``crumple hessian``: the curvature of a model's mean loss at its weights (the extreme
eigenvalues, the trace, the spectral density, sharpness; also block by block with
``--by``), written to a run folder as ``hessian.zarr`` with a page, ``hessian.html``.
Nothing heavy is imported before the arguments are parsed.

The results are one ``xarray.Dataset`` in the schema of :mod:`crumple.hessian.results`
(``--by`` gives the ``block_*`` variables, ``--tol`` the ``eigen_tol`` attr). One
operator is built and serves every estimator asked for. The eigenvectors are not stored
(``crumple surface --plane hessian`` draws along them).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

from crumple.cli import options as types
from crumple.errors import CrumpleError
from crumple.names import BLOCKINGS

HELP = "curvature at the weights: Hessian eigenvalues, trace, spectral density, sharpness"
DESCRIPTION = (
    "Compute the curvature of a model's mean loss over the data at its weights: the extreme "
    "eigenvalues of the Hessian (Lanczos), its trace (Hutchinson), its eigenvalue density "
    "(stochastic Lanczos quadrature) and sharpness measures, and write them (hessian.zarr) "
    "and an HTML page (hessian.html) to --out. In the folder of a crumple surface run, the "
    "landscape page shows them too."
)
PROBES = 100  # the default of --probes


def add(commands) -> None:
    """The ``hessian`` subcommand and its options."""
    parser = types.command(commands, "hessian", (HELP, DESCRIPTION), execute)
    types.add_model_options(parser)
    add, count = parser.add_argument, types.int_at_least
    add(
        "--top",
        type=count("--top", 0),
        default=5,
        metavar="K",
        help="the K largest eigenvalues (default 5; 0 for none)",
    )
    add(
        "--bottom",
        type=count("--bottom", 1),
        metavar="K",
        help="also the K smallest (negative ones: directions in which the loss falls)",
    )
    add(
        "--tol",
        type=types.positive_float("--tol"),
        metavar="TOL",
        help="Lanczos's relative residual for --top and --bottom (default 1e-6 in float64, "
        "1e-4 in lower precision)",
    )
    add("--trace", action="store_true", help="Hutchinson's estimate of the trace, with its error")
    add(
        "--probes",
        type=count("--probes", 2),
        metavar="N",
        help=f"random sign vectors of --trace and --sharpness (default {PROBES})",
    )
    add(
        "--density",
        action="store_true",
        help="the eigenvalue density by stochastic Lanczos quadrature (10 probes x 40 steps; "
        "with --by, each block's smoothed by the whole model's kernel width)",
    )
    add(
        "--sharpness",
        action="store_true",
        help="epsilon-sharpness (Keskar et al.) and adaptive sharpness (Kwon et al.)",
    )
    add(
        "--by",
        choices=BLOCKINGS,
        help="also each diagonal block of the Hessian: one per parameter, per layer (a "
        "module's own parameters) or per top-level module",
    )
    add(
        "--seed",
        type=count("--seed", 0),
        default=0,
        metavar="N",
        help="seed of the start vectors (default 0)",
    )
    add(
        "--out",
        type=Path,
        default=Path("out/hessian"),
        metavar="RUN",
        help="run folder (default out/hessian); the folder of a crumple surface run of the "
        "same model and data takes the results beside its landscape",
    )


def execute(args: argparse.Namespace) -> None:
    """Check the options and the folder, compute, write, and say what was found."""
    from crumple.run.lock import writer

    _check_options(args)
    _check_folder(args.out)
    with writer(args.out):  # the one writer of --out, before it is read: another is refused
        _compute_and_write(args)


def _compute_and_write(args: argparse.Namespace) -> None:
    """The work of ``execute``, with --out held."""
    model, loss_fn, batches = types.load_inputs(args)
    surface_run = _check_surface_run(args.out, model, batches)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wanted = [f"top {args.top}"] * bool(args.top) + [f"bottom {args.bottom}"] * bool(args.bottom)
    wanted += [o for o in ("trace", "density", "sharpness") if getattr(args, o)]
    by = f", by {args.by}" if args.by else ""
    print(f"crumple hessian: {n:,} parameters; {', '.join(wanted)}{by}")
    start = time.perf_counter()
    found = _compute(args, model, loss_fn, batches)
    from crumple import plot
    from crumple.evaluation.recalibration import batchnorm_layers
    from crumple.hessian.results import results, summary
    from crumple.run import store
    from crumple.run.schema import function_name
    from crumple.version import __version__

    weight = next(p for p in model.parameters() if p.requires_grad)
    layers = len(batchnorm_layers(model))
    attrs = {
        "n_parameters": n,
        "n_samples": batches.n_samples,
        "loss_name": function_name(loss_fn),
        "dtype": args.dtype or str(weight.dtype).removeprefix("torch."),
        "device": args.device or str(weight.device),
        "seed": args.seed,
        "eigen_tol": args.tol,
        "by": args.by,
        "batchnorm": f"eval mode, the running statistics of its {layers} layer(s)"
        if layers
        else None,
        "seconds": time.perf_counter() - start,
        "crumple_version": __version__,
    }
    ds = results(found, {k: v for k, v in attrs.items() if v is not None}, args.top, args.bottom)
    data = store.save_hessian(args.out, ds)
    title = f"crumple: {attrs['loss_name']} Hessian"
    page = plot.hessian_report(args.out / "hessian.html", ds, title=title)
    print(summary(ds))
    print(f"wrote {page} and {data}")
    if surface_run:
        print(
            f"{args.out} holds a surface run: `crumple plot {args.out} --html "
            f"{args.out / 'landscape.html'}` draws its page with these results"
        )


def _check_options(args: argparse.Namespace) -> None:
    if not (args.top or args.bottom or args.trace or args.density or args.sharpness):
        raise CrumpleError(
            "nothing to compute: --top 0 and none of --bottom, --trace, --density or "
            "--sharpness; ask for at least one"
        )
    if args.probes is not None and not (args.trace or args.sharpness):
        raise CrumpleError("--probes is for --trace and --sharpness: add one, or drop --probes")
    if args.tol is not None and not (args.top or args.bottom):
        raise CrumpleError("--tol is for --top and --bottom: add one, or drop --tol")
    if args.tol is not None and args.tol >= 1:
        raise CrumpleError(f"--tol is a relative accuracy below 1 (such as 1e-6), got {args.tol:g}")
    if args.by and not (args.top or args.bottom or args.trace or args.density):
        raise CrumpleError(
            "--by splits --top, --bottom, --trace and --density into blocks (--sharpness is "
            "of the whole model): add one of them, or drop --by"
        )


def _check_folder(out: Path) -> None:
    """Refuse a run folder that is a file or a recorded path, before any work."""
    from crumple.trajectory import INDEX

    if out.exists() and not out.is_dir():
        raise CrumpleError(
            f"--out {str(out)!r} is a file, not a folder; give a run folder (made if missing)"
        )
    if (out / INDEX).exists():
        raise CrumpleError(
            f"--out {str(out)!r} holds a recorded path (Recorder(model, to=...)), not a run; "
            "write the Hessian to a new folder or to the folder of a crumple surface run"
        )


def _check_surface_run(out: Path, model, batches) -> bool:
    """Whether ``out`` holds a surface run; one of another model or other data (by its
    fingerprint), or without a fingerprint (crumple demo), is refused."""
    from crumple.run.fingerprint import unmatched
    from crumple.run.store import RunStore

    stored = RunStore.open(out)
    if stored is None:
        return False
    with _option(f"--out {str(out)!r}"):
        previous = stored.fingerprint("this Hessian cannot be matched to its model")
    mine = _fingerprint(model, batches)
    if not str(previous.get("data")).startswith("samples:"):  # named by --data-id
        del mine["data"]
    differs = unmatched(previous, mine, str, parts=mine)
    if differs:
        raise CrumpleError(
            f"--out {str(out)!r} holds a surface run of other {' and '.join(differs)}; its "
            "page would show this Hessian as its own. Give the --model, --weights and --data "
            "of that run, or write to another folder"
        )
    return True


def _fingerprint(model, batches) -> dict[str, str]:
    """The weights and data parts of the fingerprint a surface run of this model and data
    has."""
    from crumple.run.fingerprint import samples_digest, weights_digest

    return {"weights": weights_digest(model), "data": samples_digest(batches)}


@contextlib.contextmanager
def _option(text: str):
    """A library error with the option that asked for the work in front, its advice in the
    command's words (the library's ``tol`` is ``--tol``)."""
    try:
        yield
    except CrumpleError as e:
        advice = str(e).replace("looser tol", "looser --tol")
        raise CrumpleError(f"{text}: {advice}") from e


def _compute(args: argparse.Namespace, model, loss_fn, batches) -> dict[str, Any]:
    """What the options ask for, by name (``block_NAME``: the same per block)."""
    import torch

    from crumple import hessian

    dtype = getattr(torch, args.dtype) if args.dtype else None
    operator = hessian.Hessian(model, loss_fn, batches, dtype=dtype, device=args.device)
    probes = PROBES if args.probes is None else args.probes
    jobs = [
        (which, f"--{flag} {k}", hessian.eigen, {"k": k, "which": which, "tol": args.tol})
        for which, flag, k in (("largest", "top", args.top), ("smallest", "bottom", args.bottom))
        if k
    ]
    if args.trace:
        jobs.append(("trace", "--trace", hessian.trace, {"probes": probes}))
    if args.density:
        jobs.append(("density", "--density", hessian.density, {}))
    found: dict[str, Any] = {}
    for name, text, compute, kwargs in jobs:
        with _option(text):
            found[name] = compute(operator, **kwargs, seed=args.seed)
            if args.by and name == "density":  # the whole model's kernel, to compare
                kwargs = {**kwargs, "width": found["density"].attrs["width"]}
            if args.by:
                found[f"block_{name}"] = compute(operator, **kwargs, by=args.by, seed=args.seed)
    if args.sharpness:
        with _option("--sharpness"):
            found["sharpness"] = hessian.sharpness(operator, probes=probes, seed=args.seed)
    return found
