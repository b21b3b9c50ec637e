"""``crumple hessian``: the curvature of a model's mean loss at its weights (the extreme
eigenvalues, the trace, the spectral density, sharpness; also block by block with
``--by``), written to a run folder as ``hessian.zarr`` with a page, ``hessian.html``.
Nothing heavy is imported before the arguments are parsed.

The results are one ``xarray.Dataset`` (:func:`results`): ``eigenvalues`` and
``residuals`` over ``rank`` (0 the largest, 1 the next, ...; -1 the smallest, -2 the next,
...), the trace in attrs (``trace``, ``trace_stderr``, ``trace_probes``,
``trace_method``), ``density`` over ``eigenvalue`` with its quadrature
(``density_nodes``, ``density_weights`` over ``probe`` and ``node``; ``density_*``
attrs), the sharpness measures in ``sharpness_*`` attrs, and with ``--by`` the same per
block along ``block`` (``block_eigenvalues``, ``block_trace``, ``block_density`` over
``bin`` at ``block_eigenvalue``: each block's density on its own eigenvalues, smoothed
by the whole model's kernel width, with ``block_density_width`` and
``block_n_parameters``; ``eigen_tol``: ``--tol``). The
eigenvectors are not stored (``crumple surface --plane hessian`` draws along them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

from crumple import cli_types as types
from crumple.errors import CrumpleError

HELP = "curvature at the weights: Hessian eigenvalues, trace, spectral density, sharpness"
DESCRIPTION = (
    "Compute the curvature of a model's mean loss over the data at its weights: the extreme "
    "eigenvalues of the Hessian (Lanczos), its trace (Hutchinson), its eigenvalue density "
    "(stochastic Lanczos quadrature) and sharpness measures, and write them (hessian.zarr) "
    "and an HTML page (hessian.html) to --out. In the folder of a crumple surface run, the "
    "landscape page shows them too."
)
# crumple.hessian.operator.BLOCKINGS, named here without importing torch (a test checks)
BLOCKINGS = ("parameter", "layer", "module")
PROBES = 100  # the default of --probes


def add(commands) -> None:
    """The ``hessian`` subcommand and its options."""
    parser = commands.add_parser("hessian", help=HELP, description=DESCRIPTION)
    parser.set_defaults(run=run)
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


def run(args: argparse.Namespace) -> None:
    """Check the options and the folder, compute, write, and say what was found."""
    _check_options(args)
    _check_folder(args.out)
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
    from crumple.run import store
    from crumple.run.schema import function_name
    from crumple.version import __version__

    weight = next(p for p in model.parameters() if p.requires_grad)
    attrs = {
        "n_parameters": n,
        "n_samples": batches.n_samples,
        "loss_name": function_name(loss_fn),
        "dtype": args.dtype or str(weight.dtype).removeprefix("torch."),
        "device": args.device or str(weight.device),
        "seed": args.seed,
        "eigen_tol": args.tol,
        "by": args.by,
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
    from crumple.run.store import RunStore

    stored = RunStore.open(out)
    if stored is None:
        return False
    attrs = stored.attrs
    if "fingerprint" not in attrs:
        raise CrumpleError(
            f"--out {str(out)!r} holds a run without a fingerprint (crumple demo writes such "
            "runs), so this Hessian cannot be matched to its model; write it to another folder"
        )
    previous, mine = json.loads(attrs["fingerprint"]), _fingerprint(model, batches)
    differs = [part for part in ("weights", "data") if previous.get(part) != mine[part]]
    if not str(previous.get("data")).startswith("samples:"):  # named by --data-id
        differs = [part for part in differs if part != "data"]
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
    from crumple.run.driver import samples_digest, weights_digest

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

    options = {
        "seed": args.seed,
        "dtype": getattr(torch, args.dtype) if args.dtype else None,
        "device": args.device,
    }
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
            found[name] = compute(model, loss_fn, batches, **kwargs, **options)
            if args.by and name == "density":  # the whole model's kernel, to compare
                kwargs = {**kwargs, "width": found["density"].attrs["width"]}
            if args.by:
                found[f"block_{name}"] = compute(
                    model, loss_fn, batches, **kwargs, by=args.by, **options
                )
    if args.sharpness:
        with _option("--sharpness"):
            found["sharpness"] = hessian.sharpness(
                model, loss_fn, batches, probes=probes, **options
            )
    return found


def results(found: dict[str, Any], attrs: dict, top: int, bottom: int | None):
    """The dataset of ``found`` (see the module's notes), with ``attrs``.

    Example:
        >>> import numpy as np
        >>> from crumple.hessian import Eigen
        >>> largest = Eigen(np.array([4.0, 2.0]), [], np.array([1e-12, 2e-12]), 20)
        >>> smallest = Eigen(np.array([-1.0]), [], np.array([3e-12]), 20)
        >>> ds = results({"largest": largest, "smallest": smallest}, {}, 2, 1)
        >>> ds.eigenvalues.to_series().to_dict()
        {0: 4.0, 1: 2.0, -1: -1.0}
    """
    import numpy as np
    import xarray as xr

    bottom = bottom or 0
    ds = xr.Dataset(attrs=dict(attrs))
    blocks = next((list(v) for k, v in found.items() if k.startswith("block_")), [])
    if blocks:
        ds = ds.assign_coords(block=("block", np.array(blocks, dtype=object)))

    def ends(largest, smallest, field: str) -> np.ndarray:
        """``field`` of the eigenpairs by rank (nan where a block has fewer)."""
        values = np.full(top + bottom, np.nan)
        if largest is not None:
            v = getattr(largest, field)[:top]
            values[: len(v)] = v
        if smallest is not None:  # ascending: the smallest goes last, at rank -1
            v = getattr(smallest, field)[:bottom]
            values[top + bottom - len(v) :] = v[::-1]
        return values

    if "largest" in found or "smallest" in found:
        ranks = [*range(top), *range(-bottom, 0)]
        ds = ds.assign_coords(rank=("rank", ranks, {"long_name": "0 the largest, -1 the smallest"}))
        for field in ("eigenvalues", "residuals"):
            ds[field] = ("rank", ends(found.get("largest"), found.get("smallest"), field))
            if blocks and ("block_largest" in found or "block_smallest" in found):
                per_block = [
                    ends(
                        found.get("block_largest", {}).get(b),
                        found.get("block_smallest", {}).get(b),
                        field,
                    )
                    for b in blocks
                ]
                ds[f"block_{field}"] = (("block", "rank"), np.stack(per_block))
    if "trace" in found:
        t = found["trace"]
        ds.attrs |= {
            "trace": t.estimate,
            "trace_stderr": t.stderr,
            "trace_probes": t.probes,
            "trace_method": t.method,
        }
    if "block_trace" in found:
        ds["block_trace"] = ("block", [found["block_trace"][b].estimate for b in blocks])
        ds["block_trace_stderr"] = ("block", [found["block_trace"][b].stderr for b in blocks])
    if "density" in found:
        esd = found["density"]
        ds["density"] = esd.density.assign_attrs(long_name="eigenvalue density")
        ds["density_nodes"] = (("probe", "node"), esd.nodes.values)
        ds["density_weights"] = (("probe", "node"), esd.weights.values)
        ds.attrs |= {f"density_{k}": esd.attrs[k] for k in ("probes", "steps", "width")}
    if "block_density" in found:
        each = [found["block_density"][b] for b in blocks]
        ds["block_density"] = (("block", "bin"), np.stack([e.density.values for e in each]))
        ds = ds.assign_coords(
            block_eigenvalue=(("block", "bin"), np.stack([e.eigenvalue.values for e in each]))
        )
        ds["block_density_width"] = ("block", [e.attrs["width"] for e in each])
        ds["block_n_parameters"] = ("block", [e.attrs["n_parameters"] for e in each])
    if "sharpness" in found:
        ds.attrs |= {f"sharpness_{k}": float(v) for k, v in found["sharpness"].as_dict().items()}
    return ds


def summary(ds) -> str:
    """What ``crumple hessian`` prints: the eigenvalues, the trace, the sharpness.

    Example:
        >>> import xarray as xr
        >>> print(summary(xr.Dataset({"eigenvalues": ("rank", [4.0, 2.0])},
        ...                          coords={"rank": [0, 1]}, attrs={"trace": 7.5,
        ...                          "trace_stderr": 0.25, "trace_probes": 100})))
        largest eigenvalues: 4, 2
        trace: 7.5 ± 0.25 (100 probes)
    """
    lines = []
    if "eigenvalues" in ds:
        ranks = [int(r) for r in ds["rank"].values]
        for end, chosen in (
            ("largest", sorted(r for r in ranks if r >= 0)),
            ("smallest", sorted(r for r in ranks if r < 0)[::-1]),
        ):
            if chosen:
                values = ds.eigenvalues.sel(rank=chosen).values
                lines.append(f"{end} eigenvalues: {', '.join(f'{v:.5g}' for v in values)}")
    a = ds.attrs
    if "trace" in a:
        lines.append(
            f"trace: {a['trace']:.5g} ± {a['trace_stderr']:.2g} ({a['trace_probes']} probes)"
        )
    if "sharpness_epsilon_sharpness" in a:
        lines.append(
            f"epsilon-sharpness {a['sharpness_epsilon_sharpness']:.4g}% "
            f"(epsilon {a['sharpness_epsilon']:g}), adaptive sharpness "
            f"{a['sharpness_adaptive_sharpness']:.4g} (rho {a['sharpness_rho']:g})"
        )
    if "block" in ds.dims:
        lines.append(f"{ds.sizes['block']} blocks by {a.get('by', 'group')}: see the page")
    return "\n".join(lines)
