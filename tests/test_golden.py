"""Golden results: the numbers crumple gave before a restructuring, kept bit for bit.

``tests/data/golden.npz`` holds, in float64 (and float32 where the case says so), what the
public API returned for small fixed inputs built here: surfaces (each strategy, with a
metric, in float32 too), a surface stopped part way and resumed from its run folder, a line,
``Grid.auto``'s axes and sentence, a curvature map, a Dask run, a projected training path,
and the Hessian's eigenvalues and trace. Each test recomputes its case with the code under
test and compares the raw bits; on failure it prints which entries differ and where.

Only public names are used (``cr.surface``, ``cr.line``, ``cr.Grid.auto``,
``cr.Plane.random``, ``cr.project``, ``cr.Recorder``, ``cr.hessian.eigen``,
``cr.hessian.trace``), so the test survives modules moving. Every case runs on the CPU with
one torch thread and pins ``strategy``: the default ``"auto"`` times the candidates, and
the strategies differ in the last bit.

Regenerate the file only from the code whose behaviour is the reference, e.g. a worktree of
the commit before the change::

    git worktree add /tmp/base HEAD
    cp tests/test_golden.py /tmp/base/tests/
    cd /tmp/base && PYTHONPATH=/tmp/base /work/main/.venv/bin/python tests/test_golden.py \\
        --regenerate --out /work/main/tests/data/golden.npz
    cd /work/main && git worktree remove --force /tmp/base

(``--out`` defaults to ``tests/data/golden.npz`` beside this file; the script prints the
``crumple`` it imported, so check that it is the reference checkout's.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr

GOLDEN = Path(__file__).parent / "data" / "golden.npz"
ALPHA = np.linspace(-1.0, 1.0, 9)
BETA = np.linspace(-0.75, 0.75, 7)


# ---------------------------------------------------------------------- fixed inputs


def make_mlp(dtype=torch.float64, hidden: int = 8):
    """Linear(4, hidden)-Tanh-Linear(hidden, 3) from seed 0, and 64 made-up samples."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3)
    ).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (64,), generator=g)
    return model, (x, y)


def make_tiny(dtype=torch.float64):
    """Linear(2, 3)-Tanh-Linear(3, 2): 17 parameters, for the curvature map."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (32,), generator=g)
    return model.to(dtype), (x.to(dtype), y)


def accuracy(pred, y):
    return (pred.argmax(-1) == y).to(pred.dtype).mean()


class Stop(Exception):
    """Raised by ``stopping_loss`` to stop a run part way."""


STOP_AFTER = [None]  # calls of stopping_loss left before it raises; None: never


def stopping_loss(pred, y):
    """Cross-entropy that raises ``Stop`` once ``STOP_AFTER[0]`` calls have been made."""
    if STOP_AFTER[0] is not None:
        if STOP_AFTER[0] <= 0:
            raise Stop("stopped on purpose")
        STOP_AFTER[0] -= 1
    return F.cross_entropy(pred, y)


@contextlib.contextmanager
def one_thread():
    """One torch thread (the bits of a reduction can depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _surface(model, data, strategy, **options):
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(ALPHA, BETA)
    return cr.surface(
        model, F.cross_entropy, data, plane, grid, strategy=strategy, progress=False, **options
    )


def _surface_entries(prefix: str, ds) -> dict[str, np.ndarray]:
    out = {f"{prefix}/{v}": np.asarray(ds[v].values) for v in sorted(ds.data_vars)}
    out |= {f"{prefix}/alpha": ds.alpha.values, f"{prefix}/beta": ds.beta.values}
    return out


# ---------------------------------------------------------------------- the cases


def case_surface(strategy: str, dtype=torch.float64) -> dict[str, np.ndarray]:
    model, data = make_mlp(dtype)
    ds = _surface(model, data, strategy, metrics={"accuracy": accuracy})
    name = f"surface_{strategy}_{str(dtype).removeprefix('torch.')}"
    return _surface_entries(name, ds)


def case_resume(tmp: Path) -> dict[str, np.ndarray]:
    """Stopped by an exception from the loss after some tiles (7 points each), resumed."""
    model, data = make_mlp()
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(ALPHA, BETA)
    store = Path(tmp) / "run"

    def run():
        return cr.surface(
            model, stopping_loss, data, plane, grid,
            strategy="loop", chunk_size=7, store=store, progress=False,
        )  # fmt: skip

    STOP_AFTER[0] = 30
    try:
        with pytest.raises(Stop):
            run()
    finally:
        STOP_AFTER[0] = None
    resumed = run()
    tiles = len(list(grid.tiles(7)))
    computed = resumed.attrs["tiles_computed"]
    assert 0 < computed < tiles, f"not a resume: {computed} of {tiles} tiles computed again"
    again = run()
    assert again.attrs["tiles_computed"] == 0
    assert again.loss.values.tobytes() == resumed.loss.values.tobytes()
    whole = cr.surface(
        model, stopping_loss, data, plane, grid, strategy="loop", chunk_size=7, progress=False
    )
    assert whole.loss.values.tobytes() == resumed.loss.values.tobytes(), "resumed != whole"
    return _surface_entries("resume", resumed)


def case_line() -> dict[str, np.ndarray]:
    model, data = make_mlp()
    plane = cr.Plane.random(model, seed=0)
    ds = cr.line(
        model, F.cross_entropy, data, plane, np.linspace(-2, 2, 21),
        strategy="vmap", progress=False,
    )  # fmt: skip
    return {"line/loss": ds.loss.values, "line/alpha": ds.alpha.values}


def case_grid_auto() -> dict[str, np.ndarray]:
    model, data = make_mlp()
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid.auto(model, F.cross_entropy, data, plane, rise=1.5, num=11, strategy="vmap")
    return {
        "grid_auto/alpha": grid.axes[0],
        "grid_auto/beta": grid.axes[1],
        "grid_auto/chosen": np.array(grid.chosen),
    }


def case_curvature() -> dict[str, np.ndarray]:
    model, data = make_tiny()
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    ds = cr.surface(
        model, F.cross_entropy, data, plane, grid,
        curvature=True, strategy="loop", progress=False,
    )  # fmt: skip
    return {
        f"curvature/{v}": ds[v].values
        for v in ("loss", "lambda_max", "lambda_min", "lambda_ratio")
        if v in ds
    }


def case_dask() -> dict[str, np.ndarray]:
    model, data = make_mlp()
    ds = _surface(model, data, "vmap", dask="local:2", chunk_size=7)
    return {"dask/loss": ds.loss.values}


def case_project() -> dict[str, np.ndarray]:
    """Six SGD steps recorded on a copy of the MLP, projected on a plane through the end."""
    model, (x, y) = make_mlp()
    trained = copy.deepcopy(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    rec = None
    for _ in range(6):
        optimizer.zero_grad()
        loss = F.cross_entropy(trained(x), y)
        loss.backward()
        optimizer.step()
        if rec is None:  # the golden file's step 0: after the first update
            rec = cr.Recorder(trained, loss=loss)
        else:
            rec.record(loss=loss)
    plane = cr.Plane.random(trained, seed=3)
    path = cr.project(rec.trajectory, plane, trained, F.cross_entropy, (x, y), strategy="vmap")
    names = ("alpha", "beta", "loss", "loss_on_plane", "off_plane", "recorded_loss")
    return {f"project/{v}": path[v].values for v in (*names, "step")}


def case_hessian() -> dict[str, np.ndarray]:
    """Eigenvalues (dense: 67 parameters; Lanczos: 387) and trace estimates."""
    model, data = make_mlp()
    top = cr.hessian.eigen(model, F.cross_entropy, data, k=3)
    both = cr.hessian.eigen(model, F.cross_entropy, data, k=2, which="both")
    wide, wide_data = make_mlp(hidden=48)
    lanczos = cr.hessian.eigen(wide, F.cross_entropy, wide_data, k=3, seed=0)
    tr = cr.hessian.trace(model, F.cross_entropy, data, probes=30, seed=0)
    trpp = cr.hessian.trace(model, F.cross_entropy, data, probes=30, method="hutch++", seed=0)
    return {
        "hessian/eigen_k3": np.asarray(top.eigenvalues),
        "hessian/eigen_both_k2": np.asarray(both.eigenvalues),
        "hessian/eigen_lanczos_k3": np.asarray(lanczos.eigenvalues),
        "hessian/trace": np.array([tr.estimate, tr.stderr]),
        "hessian/trace_hutchpp": np.array([trpp.estimate, trpp.stderr]),
    }


FAST: dict[str, Callable[..., dict[str, np.ndarray]]] = {
    "surface_loop": lambda _: case_surface("loop"),
    "surface_vmap": lambda _: case_surface("vmap"),
    "surface_expanded": lambda _: case_surface("expanded"),
    "surface_vmap_float32": lambda _: case_surface("vmap", torch.float32),
    "surface_loop_float32": lambda _: case_surface("loop", torch.float32),
    "resume": case_resume,
    "line": lambda _: case_line(),
    "grid_auto": lambda _: case_grid_auto(),
    "curvature": lambda _: case_curvature(),
    "project": lambda _: case_project(),
    "hessian": lambda _: case_hessian(),
}
SLOW: dict[str, Callable[..., dict[str, np.ndarray]]] = {"dask": lambda _: case_dask()}


# ---------------------------------------------------------------------- comparison


# Hessian-vector products go one vector at a time or several under one vmap, whichever a
# timed first call finds faster (crumple.hessian.operator), so on a loaded machine the
# Hessian cases may round differently in the last bit; they are held to a few ulps.
ULPS = {"curvature": 8, "hessian": 8}


def differences(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], ulps: int = 0
) -> list[str]:
    """A line per entry whose dtype, shape or bits differ (empty when all are identical);
    ``ulps``: how many units in the last place a float may differ."""
    lines = []
    for key in sorted(set(got) | set(want)):
        if key not in want:
            lines.append(f"{key}: not in {GOLDEN.name} (regenerate?)")
            continue
        if key not in got:
            lines.append(f"{key}: no longer computed")
            continue
        a, b = np.asarray(got[key]), np.asarray(want[key])
        if a.dtype != b.dtype or a.shape != b.shape:
            lines.append(f"{key}: {a.dtype}{a.shape} now, {b.dtype}{b.shape} stored")
        elif a.dtype.kind in "US":
            if not np.array_equal(a, b):
                lines.append(f"{key}: {a!s} now, {b!s} stored")
        else:
            bits = f"u{a.dtype.itemsize}"
            same = a.reshape(-1).view(bits) == b.reshape(-1).view(bits)
            if ulps and a.dtype.kind == "f":
                spacing = np.spacing(np.abs(b.reshape(-1)))
                same |= np.abs(a.reshape(-1) - b.reshape(-1)) <= ulps * spacing
            if not same.all():
                where = np.flatnonzero(~same)
                first = [
                    f"{tuple(int(j) for j in np.unravel_index(i, a.shape))}: "
                    f"{a.reshape(-1)[i].item()!r} now, {b.reshape(-1)[i].item()!r} stored"
                    for i in where[:5]
                ]
                with np.errstate(all="ignore"):
                    worst = np.nanmax(np.abs(a.astype(float) - b.astype(float)))
                lines.append(
                    f"{key}: {len(where)} of {a.size} entries differ (max abs diff {worst:.3g}); "
                    + "; ".join(first)
                )
    return lines


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; see this module's docstring to regenerate it")
    with np.load(GOLDEN, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _check(name, fn, golden, tmp_path):
    with one_thread():
        got = fn(tmp_path)
    want = {k: v for k, v in golden.items() if k.split("/")[0] == next(iter(got)).split("/")[0]}
    wrong = differences(got, want, ULPS.get(name, 0))
    assert not wrong, f"case {name!r} differs from {GOLDEN.name}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", list(FAST))
def test_golden(name, golden, tmp_path):
    _check(name, FAST[name], golden, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW))
def test_golden_slow(name, golden, tmp_path):
    pytest.importorskip("distributed")
    _check(name, SLOW[name], golden, tmp_path)


def test_golden_file_has_no_stray_entries(golden):
    """Every stored entry belongs to a case (so a renamed case is not silently unchecked)."""
    prefixes = {
        "surface_loop_float64", "surface_vmap_float64", "surface_expanded_float64",
        "surface_vmap_float32", "surface_loop_float32", "resume", "line", "grid_auto",
        "curvature", "project", "hessian", "dask",
    }  # fmt: skip
    assert {k.split("/")[0] for k in golden} == prefixes


# ---------------------------------------------------------------------- regeneration


def regenerate(out: Path = GOLDEN) -> dict[str, np.ndarray]:
    """Compute every case with the ``crumple`` imported here and write them to ``out``."""
    import tempfile

    print(f"crumple from {cr.__file__}")
    entries: dict[str, np.ndarray] = {}
    with one_thread():
        for name, fn in {**FAST, **SLOW}.items():
            with tempfile.TemporaryDirectory() as tmp:
                got = fn(Path(tmp))
            clash = set(got) & set(entries)
            assert not clash, clash
            entries |= got
            print(f"  {name}: {', '.join(got)}")
    both = (entries["dask/loss"], entries["surface_vmap_float64/loss"])
    assert both[0].tobytes() == both[1].tobytes(), "the Dask run differs from in process"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **entries)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, {len(entries)} entries)")
    return entries


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regenerate", action="store_true", help="write the golden file")
    parser.add_argument("--out", type=Path, default=GOLDEN, help="where (default: %(default)s)")
    args = parser.parse_args()
    if not args.regenerate:
        parser.error("nothing to do: pass --regenerate")
    regenerate(args.out)
    sys.exit(0)
