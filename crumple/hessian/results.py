"""The Hessian results as one ``xarray.Dataset``: the schema that ``crumple hessian``
writes (``hessian.zarr``) and the pages read.

``eigenvalues`` and ``residuals`` over ``rank`` (0 the largest, 1 the next, ...; -1 the
smallest, -2 the next, ...); the trace in attrs (``trace``, ``trace_stderr``,
``trace_probes``, ``trace_method``); ``density`` over ``eigenvalue`` with its quadrature
(``density_nodes``, ``density_weights`` over ``probe`` and ``node``; ``density_*``
attrs); the sharpness measures in ``sharpness_*`` attrs; and for results by block
(``by=`` of the estimators) the same per block along ``block`` (``block_eigenvalues``,
``block_trace``, ``block_density`` over ``bin`` at ``block_eigenvalue``: each block's
density on its own eigenvalues, smoothed by the whole model's kernel width, with
``block_density_width`` and ``block_n_parameters``). ``eigen_tol`` in attrs is the
``tol`` given to :func:`~crumple.hessian.eigen`. The eigenvectors are not stored
(:meth:`Plane.hessian <crumple.plane.Plane.hessian>` draws along them).
"""

from __future__ import annotations

from typing import Any

from crumple.checks import check_numbers

# the attributes that hold numbers (beside every sharpness_* one)
NUMBERS = (
    *("n_parameters", "n_samples", "seed", "eigen_tol", "seconds"),
    *("trace", "trace_stderr", "trace_probes", "density_probes", "density_steps"),
    "density_width",
)


def results(found: dict[str, Any], attrs: dict, top: int, bottom: int | None):
    """The dataset of ``found`` (see the module's notes), with ``attrs``.

    ``found`` holds the estimators' results by name: ``"largest"`` and ``"smallest"``
    (:class:`~crumple.hessian.Eigen`), ``"trace"`` (:class:`~crumple.hessian.Trace`),
    ``"density"`` (the dataset of :func:`~crumple.hessian.density`), ``"sharpness"``
    (:class:`~crumple.hessian.Sharpness`) and ``"block_NAME"``: the same by block, as
    ``by=`` returns them. ``top`` and ``bottom`` are the ranks kept at each end.

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

    def ends(largest, smallest, field: str):
        return _ends(largest, smallest, field, top, bottom)

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


def check(ds) -> None:
    """A ``ValueError`` naming the first attribute of ``ds`` (the results as :func:`results`
    makes them, read back from ``hessian.zarr``) that is not a number where the pages draw
    one: the counts, times and estimates in :data:`NUMBERS` and every ``sharpness_*``.

    Example:
        >>> import xarray as xr
        >>> check(xr.Dataset({"eigenvalues": ("rank", [4.0])}, attrs={"trace": 7.5}))
        >>> check(xr.Dataset(attrs={"trace": "7.5"}))
        Traceback (most recent call last):
        ...
        ValueError: its attribute 'trace' is '7.5', not a number
    """
    check_numbers(ds.attrs, NUMBERS, prefixes=("sharpness_",))


def _ends(largest, smallest, field: str, top: int, bottom: int):
    """``field`` of the eigenpairs by rank (nan where a block has fewer)."""
    import numpy as np

    values = np.full(top + bottom, np.nan)
    if largest is not None:
        v = getattr(largest, field)[:top]
        values[: len(v)] = v
    if smallest is not None:  # ascending: the smallest goes last, at rank -1
        v = getattr(smallest, field)[:bottom]
        values[top + bottom - len(v) :] = v[::-1]
    return values


def summary(ds) -> str:
    """The results of :func:`results` in a few lines: the eigenvalues, the trace, the
    sharpness (what ``crumple hessian`` prints).

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
    if "batchnorm" in a:
        lines.append(f"BatchNorm: {a['batchnorm']}")
    return "\n".join(lines)
