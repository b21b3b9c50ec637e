"""Bad and awkward inputs across the Python API and the command line: each is refused before
any work with a CrumpleError (or CrumpleTypeError) whose message names what was wrong, or
gives the right result; the model and an existing run folder are never changed."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.errors import CrumpleTypeError
from tests.cases import MLP, AlwaysDropout, assert_untouched, digits, snapshot

GRID = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A model, its data and plane, and a finished run folder made from them."""
    torch.manual_seed(0)
    model = MLP()
    x, y = digits(60, dtype=torch.float32)
    plane = cr.Plane.random(model, seed=0)
    store = tmp_path_factory.mktemp("runs") / "run"
    cr.surface(model, F.cross_entropy, (x, y), plane, GRID, store=store, progress=False)
    return {"model": model, "x": x, "y": y, "plane": plane, "store": store}


def folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def surface(w, **changes):
    """cr.surface on the world, with some arguments replaced."""
    args = {"model": w["model"], "loss_fn": F.cross_entropy, "data": (w["x"], w["y"])}
    args |= {"plane": w["plane"], "grid": GRID}
    options = {k: v for k, v in changes.items() if k not in args}
    args |= {k: v for k, v in changes.items() if k in args}
    if isinstance(changes.get("model"), torch.nn.Module) and "plane" not in changes:
        args["plane"] = cr.Plane.random(changes["model"], seed=0)  # a plane of that model
    return cr.surface(*args.values(), progress=False, **options)


def scalar_float(pred, y):
    return float(F.cross_entropy(pred, y))


def per_sample(pred, y):
    return F.cross_entropy(pred, y, reduction="none")


class ReturnsTuple(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)), 0


class Raises(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.lin(x.flatten(1)) / 0 if x.shape[0] > 100 else 1 / 0


def other_model_plane(w):
    return cr.Plane.random(torch.nn.Linear(64, 10))


def nan_data(w):
    x = w["x"].clone()
    x[32 + 2, 0, 4, 4] = float("nan")
    return [(x[:32], w["y"][:32]), (x[32:], w["y"][32:])]


def other_data(w):
    x, y = digits(30, dtype=torch.float32)
    return (x, y)


PYTHON_CASES = {
    # the model, the loss, the metrics
    "model-is-a-function": (dict(model=len), CrumpleTypeError, "model must be a torch.nn.Module"),
    "model-is-none": (dict(model=None), CrumpleTypeError, "model must be a torch.nn.Module"),
    "loss-is-none": (dict(loss_fn=None), CrumpleTypeError, "loss must be a function"),
    "loss-is-a-name": (dict(loss_fn="mse"), CrumpleTypeError, "loss must be a function"),
    "metric-named-loss": (dict(metrics={"loss": F.mse_loss}), cr.CrumpleError, "replace the loss"),
    "metrics-a-list": (dict(metrics=[F.mse_loss]), CrumpleTypeError, "metrics must be a dict"),
    "metric-not-callable": (dict(metrics={"acc": 3}), CrumpleTypeError, "acc must be a function"),
    "loss-returns-float": (dict(loss_fn=scalar_float), cr.CrumpleError, "returned float"),
    "loss-per-sample": (dict(loss_fn=per_sample), cr.CrumpleError, "batch mean as a scalar"),
    "model-returns-tuple": (
        dict(model=ReturnsTuple()),
        cr.CrumpleError,
        "failed on what the model returned, tuple",
    ),
    "dropout-in-eval": (dict(model=AlwaysDropout()), cr.CrumpleError, "changes between two"),
    # the plane and the grid
    "plane-a-name": (dict(plane="random"), CrumpleTypeError, "plane must be a crumple.Plane"),
    "grid-an-array": (dict(grid=np.zeros(3)), CrumpleTypeError, "grid must be a crumple.Grid"),
    "plane-of-another-model": (dict(plane=other_model_plane), cr.CrumpleError, "not made for"),
    "grid-one-axis": (dict(grid=cr.Grid([0.0, 1.0])), cr.CrumpleError, "needs a 2-D plane"),
    "grid-too-large": (
        dict(grid=cr.Grid(np.arange(100_000.0), np.arange(100_000.0))),
        cr.CrumpleError,
        "GiB for its results",
    ),
    # how it runs
    "strategy-unknown": (dict(strategy="fast"), cr.CrumpleError, "strategy must be 'auto'"),
    "chunk-size-fraction": (dict(chunk_size=2.5), cr.CrumpleError, "chunk_size must be a posi"),
    "chunk-size-zero": (dict(chunk_size=0), cr.CrumpleError, "chunk_size must be a positive"),
    "max-memory-zero": (dict(max_memory=0), cr.CrumpleError, "max_memory must be a positive"),
    "batch-size-negative": (dict(batch_size=-1), cr.CrumpleError, "batch_size must be a posi"),
    "dtype-half": (dict(dtype="float16"), cr.CrumpleError, "'float16' is not supported"),
    "dtype-integer": (dict(dtype=torch.int64), cr.CrumpleError, "is not supported"),
    "device-unknown": (dict(device="gpu"), cr.CrumpleError, "'gpu' is not a device"),
    "batching-unknown": (dict(batching="mine"), cr.CrumpleError, "batching must be one of"),
    "option-misspelt": (dict(chunks=3), cr.CrumpleError, "unknown option 'chunks'"),
    "metric-misspelt": (dict(metric={}), cr.CrumpleError, "the options are .*metrics"),
    "check-negative": (dict(check=-1), cr.CrumpleError, "check must be a number of points"),
    "check-a-bool": (dict(check=True), cr.CrumpleError, "check must be a number of points"),
    # the data
    "data-a-number": (dict(data=42), CrumpleTypeError, r"data must be an \(x, y\) pair"),
    "data-empty": (dict(data=[]), cr.CrumpleError, "holds no batches"),
    "data-inputs-only": (
        dict(data=[torch.zeros(3, 64)]),
        cr.CrumpleError,
        "batch 0 of data is Tensor; a batch is an \\(x, y\\) pair",
    ),
    "data-uneven": (
        dict(data=[(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.long))]),
        cr.CrumpleError,
        "batch 0.s y has shape \\(2,\\) but the batch has 3 rows",
    ),
    "data-nan": (dict(data=nan_data), cr.CrumpleError, "batch 1, sample 2 of the data.s x holds"),
    # Dask
    "dask-no-workers": (dict(dask="local:0"), cr.CrumpleError, "local:N with N >= 1"),
    "dask-a-number": (dict(dask=3.5), CrumpleTypeError, "dask must be a distributed.Client"),
}


@pytest.mark.parametrize("case", list(PYTHON_CASES), ids=str)
def test_python_refusals(world, case):
    changes, error, words = PYTHON_CASES[case]
    made = (other_model_plane, nan_data)  # made from the world
    changes = {k: v(world) if any(v is f for f in made) else v for k, v in changes.items()}
    before = snapshot(world["model"])
    stored = folder_hash(world["store"])
    with pytest.raises(error, match=words):
        surface(world, **changes)
    assert_untouched(world["model"], before)
    assert folder_hash(world["store"]) == stored


STORE_CASES = {
    "other-grid": (dict(grid=cr.Grid([0.0, 0.5], [0.0, 0.5])), "made with other grid"),
    "other-data": (dict(data=other_data), "data_id="),
    "other-loss": (dict(loss_fn=F.nll_loss), "made with other loss"),
    "other-dtype": (dict(dtype="float64"), "made with other dtype"),
}


@pytest.mark.parametrize("case", list(STORE_CASES), ids=str)
def test_a_run_of_other_inputs_is_refused_and_left_as_it_is(world, case):
    changes, words = STORE_CASES[case]
    changes = {k: v(world) if callable(v) and k == "data" else v for k, v in changes.items()}
    stored = folder_hash(world["store"])
    with pytest.raises(cr.CrumpleError, match=words):
        surface(world, store=world["store"], **changes)
    assert folder_hash(world["store"]) == stored


def test_store_that_is_a_file_or_cannot_be_made(world, tmp_path):
    file = tmp_path / "run.txt"
    file.write_text("mine")
    with pytest.raises(cr.CrumpleError, match="is a file, not a folder"):
        surface(world, store=file)
    with pytest.raises(cr.CrumpleError, match="cannot make the run folder"):
        surface(world, store=file / "inside")
    assert file.read_text() == "mine"


def test_errors_of_the_users_code_pass_through_with_a_note(world):
    with pytest.raises(ZeroDivisionError) as info:
        surface(world, model=Raises())
    assert any("crumple: raised by the user's code" in n for n in info.value.__notes__)

    def broken_data():
        yield (world["x"], world["y"])
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        surface(world, data=broken_data())
    assert any("iterating the data" in n for n in info.value.__notes__)


def test_awkward_inputs_that_give_the_right_result(world, tmp_path):
    model, x, y, plane = world["model"], world["x"], world["y"], world["plane"]
    shuffled = cr.Grid([1.0, -1.0, 0.0], [0.0, 1.0, -1.0])  # sorted, not folded
    assert shuffled.axes[0].tolist() == [-1.0, 0.0, 1.0]
    ds = surface(world, grid=shuffled)
    ref = cr.reference.surface(model, F.cross_entropy, (x, y), plane, GRID)
    np.testing.assert_allclose(ds.loss.values, ref.loss.values, rtol=1e-5)
    double = surface(world, model=MLP().double())
    assert double.attrs["data_cast"] == "float32 -> float64"  # float32 data, float64 model
    as_text = surface(world, dtype="float64", device="cpu")
    assert as_text.attrs["dtype"] == "float64"
    # a shuffled loader of the same samples resumes the same run
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    again = surface(world, data=loader, store=world["store"])
    assert again.attrs["tiles_computed"] == 0


def test_the_same_run_under_another_spelling_or_copied(world, tmp_path, monkeypatch):
    monkeypatch.chdir(world["store"].parent)
    copy = tmp_path / "copy"
    shutil.copytree(world["store"], copy)
    before = folder_hash(copy)
    ds = surface(world, store=copy)
    assert ds.attrs["tiles_computed"] == 0 and ds.attrs["store"] == str(copy.resolve())
    cr.store.save_run(copy, ds)  # what the command does next: nothing to rewrite
    assert folder_hash(copy) == before
    stored = folder_hash(world["store"])
    ds = surface(world, store=Path(world["store"].name))  # relative spelling
    cr.store.save_run(world["store"].resolve(), ds)  # absolute: the same folder
    assert folder_hash(world["store"]) == stored


def test_planes_trajectories_and_runs_refuse_clearly(tmp_path, world):
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    rand = cr.Plane.random(a)
    cases = [
        (lambda: cr.Plane.between(a, b, b), cr.CrumpleError, "parallel"),
        (lambda: cr.Plane.between(a, torch.nn.Linear(3, 1)), cr.CrumpleError, "other shapes"),
        (lambda: cr.Plane.random(a, normalize="filters"), cr.CrumpleError, "normalize must be"),
        (lambda: cr.Plane.axes(a, "nope"), cr.CrumpleError, "has no parameter 'nope'"),
        (lambda: cr.Recorder(a, every=0), cr.CrumpleError, "every must be a positive"),
        (lambda: cr.Recorder(a, step=-1), cr.CrumpleError, "step must be an integer after"),
        (lambda: cr.Recorder(a).finish(step=1.5), cr.CrumpleError, "step must be an integer"),
        (lambda: cr.open("no/such/run"), cr.CrumpleError, "holds no crumple run"),
        (lambda: cr.Grid([0.0, 1.0, 1.0]), cr.CrumpleError, r"holds \[1.0\] more than once"),
        (lambda: cr.Grid([0.0, np.nan]), cr.CrumpleError, "inf or nan"),
        (lambda: cr.Grid([]), cr.CrumpleError, "non-empty"),
        (lambda: cr.Grid(["a", "b"]), cr.CrumpleError, "must hold numbers"),
        (lambda: cr.Grid(np.zeros((2, 2))), cr.CrumpleError, "1-D"),
        (lambda: cr.Plane.pca("missing_folder"), cr.CrumpleError, "holds no trajectory"),
        (
            lambda: cr.Grid.auto(a, F.mse_loss, (torch.ones(4, 2), torch.ones(4, 1)), rand, num=0),
            cr.CrumpleError,
            "num must be a whole number >= 2",
        ),
    ]
    rec = cr.Recorder(a)
    rec.record()
    bent = [{"w": torch.tensor([float(t), t * t, 1.0])} for t in range(4)]
    cases += [
        (lambda: cr.Plane.pca(rec.trajectory), cr.CrumpleError, "needs at least 3"),
        (  # the weights a PCA plane is to pass through are of another model than the path's
            lambda: cr.Plane.pca(cr.Trajectory(list(range(4)), bent, [0.0] * 4), origin=a),
            cr.CrumpleError,
            r"does not match the path's snapshots: parameters only in the origin \['bias'",
        ),
        (
            lambda: cr.project(
                rec.trajectory,
                world["plane"],
                world["model"],
                F.cross_entropy,
                (world["x"], world["y"]),
            ),
            cr.CrumpleError,
            "differ from the plane's",
        ),
        (
            lambda: cr.project(
                "run/trajectory",
                world["plane"],
                world["model"],
                F.cross_entropy,
                (world["x"], world["y"]),
            ),
            CrumpleTypeError,
            "trajectory must be a crumple.Trajectory",
        ),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            call()
    damaged = tmp_path / "damaged"
    shutil.copytree(world["store"], damaged)
    (damaged / "landscape.zarr" / "surface" / "loss" / "zarr.json").unlink()
    with pytest.raises(cr.CrumpleError, match="damaged"):
        cr.open(damaged)


CLI_CASES = {
    "chunk-size-zero": (["--chunk-size", "0"], "at least 1"),
    "dtype-half": (["--dtype", "float16"], "invalid choice"),
    "axes-with-random": (["--plane", "random", "--axes", "a", "b"], "does not apply"),
    "dask-no-workers": (["--dask", "local:0"], "local:N with N >= 1"),
    "model-missing": (["--model", "no_such_module:make"], "cannot import module"),
    "grid-backwards": (["--grid", "1:-1:5"], "START < STOP"),
    "strategy-unknown": (["--strategy", "fast"], "invalid choice"),
    "out-is-a-file": (["--out", "{file}"], "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=str)
def test_command_line_refusals(case, tmp_path, capsys):
    from crumple.cli import main

    extra, words = CLI_CASES[case]
    file = tmp_path / "file.txt"
    file.write_text("mine")
    args = ["surface", "--model", "tests.cli_fixtures:make_mlp"]
    args += ["--data", "tests.cli_fixtures:digits_loader", "--out", str(tmp_path / "run")]
    args += [a.replace("{file}", str(file)) for a in extra]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert words in capsys.readouterr().err
    assert file.read_text() == "mine"
    assert not (tmp_path / "run" / "landscape.zarr").exists()


def test_command_line_run_twice_under_two_spellings(tmp_path, monkeypatch, capsys):
    from crumple.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["surface", "--model", "tests.cli_fixtures:make_mlp"]
    args += ["--data", "tests.cli_fixtures:digits_loader", "--grid", "-1:1:3"]
    main([*args, "--out", "run"])
    surface_data = tmp_path / "run" / "landscape.zarr" / "surface"
    first = folder_hash(surface_data)
    main([*args, "--out", str(tmp_path / "run")])  # the same run, absolute: no refusal
    assert folder_hash(surface_data) == first
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    main([*args, "--out", "copy"])  # a copied folder resumes too
    assert capsys.readouterr().out.count("landscape.html") == 3
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "copy").iterdir()}
    assert modes["plane.safetensors"] == modes["landscape.html"], modes


def test_command_line_float64_model_on_float32_data(tmp_path, capsys):
    from crumple.cli import main

    args = ["surface", "--model", "tests.cli_fixtures:make_mlp64", "--grid", "-1:1:3"]
    main([*args, "--data", "tests.cli_fixtures:digits_loader", "--out", str(tmp_path / "run")])
    ds = cr.open(tmp_path / "run")["surface"]
    assert ds.attrs["data_cast"] == "float32 -> float64" and ds.attrs["dtype"] == "float64"
    assert np.isfinite(ds.loss.values).all()
