"""Issue 21's smaller items, each against a real input: nan in the data named by batch and
sample (not blamed on randomness), streamed data that changes between passes refused,
Grid.auto's num checked first, callbacks given a file, Plane.pca of a folder, what
`crumple info` prints of an unfinished run, the eigen result's repr, the --dtype default,
and the Hugging Face Trainer's eval_loss against crumple's token mean."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import crumple as cr
from crumple.cli import main
from crumple.cli.info import describe
from crumple.errors import CrumpleTypeError
from crumple.integrations.tracking import Tracker
from tests.cases import MLP, assert_untouched, digits, snapshot

GRID = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
NAN_AT = (2, 5)  # batch 2, sample 5 of nan_loader's inputs


def nan_loader():
    """Digits in batches of 16, one pixel of batch 2's sample 5 nan (the CLI names it)."""
    x, y = digits(64, dtype=torch.float32)
    x[16 * NAN_AT[0] + NAN_AT[1], 0, 3, 3] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=16)


def model():
    torch.manual_seed(0)
    return MLP()


NAN_NAMED = "batch 2, sample 5 of the data's x holds nan; data with nan or inf"


@pytest.mark.parametrize("stream", [False, True], ids=["held", "streamed"])
def test_nan_in_the_data_is_named_by_batch_and_sample_in_python(stream):
    net = model()
    before = snapshot(net)
    plane = cr.Plane.random(net, seed=0)
    calls = {
        "surface": lambda: cr.surface(
            net, F.cross_entropy, nan_loader(), plane, GRID, stream=stream, progress=False
        ),
        "Grid.auto": lambda: cr.Grid.auto(net, F.cross_entropy, nan_loader(), plane, num=5),
        "line": lambda: cr.line(net, F.cross_entropy, nan_loader(), plane, [0.0], progress=False),
    }
    for name, call in calls.items():
        with pytest.raises(cr.CrumpleError, match=NAN_NAMED) as info:
            call()
        assert "changes between two passes" not in str(info.value), name
    assert_untouched(net, before)


def test_nan_in_the_data_is_named_on_the_command_line(tmp_path, capsys):
    args = ["surface", "--model", "tests.cli_fixtures:make_mlp"]
    args += ["--data", "tests.test_small_fixes:nan_loader", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as info:
        main([*args, "--grid", "-1:1:3"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert NAN_NAMED in err and "Random layers" not in err


def test_inf_in_the_target_is_named_too():
    x, y = torch.zeros(6, 2), torch.zeros(6, 1)
    y[4, 0] = -float("inf")
    net = torch.nn.Linear(2, 1)
    with pytest.raises(cr.CrumpleError, match="batch 0, sample 4 of the data's y holds -inf"):
        cr.line(net, F.mse_loss, (x, y), cr.Plane.random(net, ndim=1), [0.0], progress=False)


class NanWeightOnItsOwn(torch.nn.Module):
    """A deterministic model whose output is nan where its linear output is negative."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def forward(self, x):
        return torch.sqrt(self.lin(x))  # nan where the output is negative


def test_nan_from_the_model_itself_is_not_called_randomness():
    """The determinism check counts nan in the same place as equal: the surface is drawn,
    nan where the model gives nan."""
    torch.manual_seed(0)
    net = NanWeightOnItsOwn()
    with torch.no_grad():
        net.lin.weight.fill_(1.0)
        net.lin.bias.fill_(-0.5)
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # the first sample's output: sqrt(bias)
    ds = cr.line(
        net, F.mse_loss, (x, torch.ones(2, 1)), cr.Plane.axes(net, "lin.bias"), [-1.0, 0.0]
    )
    loss = ds.loss.values  # at the origin (bias -0.5) the model gives nan: no refusal
    assert np.isnan(loss[0]) and loss[1] == pytest.approx((1 + (2**0.5 - 1) ** 2) / 2)


# ---------------------------------------------------------------- streams that hold still


class Shrinking(IterableDataset):
    """Yields 4 samples fewer each time it is read (a stream that loses data)."""

    def __init__(self, x, y):
        self.x, self.y, self.n = x, y, len(x) + 4

    def __iter__(self):
        self.n -= 4
        for i in range(0, self.n, 4):
            yield self.x[i : i + 4], self.y[i : i + 4]


def stream_world():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net = net.double()
    x, y = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 1, dtype=torch.float64)
    return net, x, y, cr.Plane.random(net, seed=0)


def streamed_surface(net, data, plane, **options):
    """A surface read in several passes (blocks of 8 points of 25)."""
    return cr.surface(
        net, F.mse_loss, data, plane, GRID, stream=True, points_per_call=8, progress=False,
        **options,
    )  # fmt: skip


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda x, y: DataLoader(
                TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=True
            ),
            "pass 2 read 48 samples as the first did, but other ones",
        ),
        (Shrinking, "the first pass read 48 samples, pass 2 read 44"),
    ],
    ids=["shuffled-drop-last", "fewer-each-pass"],
)
def test_streamed_data_that_changes_between_passes_is_refused(make, words):
    net, x, y, plane = stream_world()
    with pytest.raises(cr.CrumpleError, match="the streamed data changed between passes") as e:
        streamed_surface(net, make(x, y), plane)
    message = str(e.value)
    assert words in message
    assert "drop_last=False" in message and "stream=False" in message and "data_id" in message


def test_streamed_data_that_holds_still_gives_the_held_surface():
    """A shuffled loader without drop_last reads the same samples each pass, in another
    order: accepted, and the surface is the held data's."""
    net, x, y, plane = stream_world()
    held = cr.surface(net, F.mse_loss, (x, y), plane, GRID, progress=False)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    streamed = streamed_surface(net, shuffled, plane)
    np.testing.assert_allclose(streamed.loss.values, held.loss.values, rtol=1e-12)
    assert streamed.attrs["n_samples"] == 50 and streamed.attrs["data"] == "streamed"


def test_streamed_data_that_changes_is_refused_into_a_run_folder_too(tmp_path):
    """With a store, the fingerprint's pass is the first: one more pass that differs is
    refused, and data_id does not let it through."""
    net, x, y, plane = stream_world()
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, drop_last=True)
    with pytest.raises(cr.CrumpleError, match="changed between passes"):
        streamed_surface(net, loader, plane, store=tmp_path / "run", data_id="mine")


# ------------------------------------------------------------------------ Grid.auto's num


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.calls = torch.nn.Linear(2, 1), 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


@pytest.mark.parametrize("num", [2.5, -3, 0, 1, True, "51", None], ids=repr)
def test_grid_auto_num_is_checked_before_any_evaluation(num):
    net = Counting()
    data = (torch.randn(8, 2), torch.randn(8, 1))
    with pytest.raises(cr.CrumpleError, match=f"num must be a whole number >= 2.*got {num!r}"):
        cr.Grid.auto(net, F.mse_loss, data, cr.Plane.random(net, seed=0), num=num)
    assert net.calls == 0


def test_grid_auto_takes_a_numpy_whole_number():
    net = Counting()
    data = (torch.randn(8, 2), torch.randn(8, 1))
    grid = cr.Grid.auto(net, F.mse_loss, data, cr.Plane.random(net, seed=0), num=np.int64(3))
    assert [len(a) for a in grid.axes] == [3, 3]


# ------------------------------------------------- callbacks, planes and the run folder


@pytest.mark.parametrize("argument", ["to", "landscape"])
def test_a_callback_given_a_file_is_refused_when_it_is_made(tmp_path, argument):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    options = {argument: file, "loss_fn": F.mse_loss}
    with pytest.raises(cr.CrumpleError, match=f"{argument}='.*notes.txt' is a file"):
        Tracker(**options)
    transformers = pytest.importorskip("transformers")
    assert transformers  # the Hugging Face callback refuses it as it is made, too
    pytest.importorskip("accelerate")
    from crumple.integrations.transformers import LandscapeCallback

    with pytest.raises(cr.CrumpleError, match="is a file"):
        LandscapeCallback(**options)
    assert file.read_text() == "mine"


def test_plane_pca_of_a_folder(tmp_path):
    net = torch.nn.Linear(3, 2)
    with pytest.raises(cr.CrumpleError, match="'missing_folder' holds no trajectory"):
        cr.Plane.pca("missing_folder")
    with pytest.raises(CrumpleTypeError, match="trajectory must be a crumple.Trajectory"):
        cr.Plane.pca(42)
    recorder = cr.Recorder(net, to=tmp_path / "path")
    for step in range(4):
        with torch.no_grad():
            net.weight.add_(0.1 * step**2)
            net.bias.sub_(0.05 * step)
        recorder.record(step=step + 1)
    from_folder = cr.Plane.pca(tmp_path / "path")
    given = cr.Plane.pca(cr.Trajectory.load(tmp_path / "path"))
    for a, b in zip(from_folder.directions, given.directions):
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_info_netcdf_into_a_folder_not_there_yet(tmp_path, capsys):
    net = torch.nn.Linear(2, 1)
    data = (torch.randn(8, 2), torch.randn(8, 1))
    grid = cr.Grid([-1.0, 0.0, 1.0], [-1.0, 1.0])
    run = tmp_path / "run"
    cr.surface(net, F.mse_loss, data, cr.Plane.random(net), grid, store=run, progress=False)
    target = tmp_path / "nodir" / "deeper" / "x.nc"
    main(["info", str(run), "--netcdf", str(target)])
    assert f"wrote {target}" in capsys.readouterr().out
    import xarray as xr

    with xr.open_dataset(target) as exported:
        assert exported.loss.shape == (3, 2)


class StopsAfter:
    """A metric that stops the run after a number of calls (as a crash would)."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, pred, y):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return F.mse_loss(pred, y)


def test_info_names_the_plane_of_an_unfinished_run_and_rounds_seconds(tmp_path):
    net = torch.nn.Linear(2, 1)
    data = (torch.randn(8, 2), torch.randn(8, 1))
    plane = cr.Plane.random(net, seed=4)
    run = tmp_path / "run"
    options = dict(tile_size=4, points_per_call=4, strategy="loop", progress=False)
    with pytest.raises(KeyboardInterrupt):
        cr.surface(net, F.mse_loss, data, plane, GRID, store=run, metrics={"m": StopsAfter(12)},
                   **options)  # fmt: skip
    text = describe(run)
    assert "tiles done; run the same command again to resume" in text  # unfinished
    assert "  plane: random, filter-normalized" in text and "custom" not in text
    finished = cr.surface(net, F.mse_loss, data, plane, GRID, store=run,
                          metrics={"m": StopsAfter(10**6)}, **options)  # fmt: skip
    text = describe(run)
    seconds = [line for line in text.splitlines() if line.startswith("  seconds: ")]
    assert seconds == [f"  seconds: {finished.attrs['seconds']:.3g}"]


# --------------------------------------------------------------------- Hessian, CLI, HF


def test_the_eigen_result_shows_eigenvector_shapes_not_their_values():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    data = (torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,)))
    top = cr.hessian.eigen(net, F.cross_entropy, data, k=2)
    text = repr(top)
    assert "eigenvectors=2 x {weight: (2, 3), bias: (2,)}" in text
    assert "tensor(" not in text and len(text) < 400
    assert f"products={top.products}" in text


def test_the_dtype_default_is_said_as_it_is(capsys):
    with pytest.raises(SystemExit):
        main(["hessian", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: the model's own, float32 for most models)" in help_text
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "[--dtype float64]" not in readme and "[--dtype float32|float64]" in readme


@pytest.mark.slow
def test_the_trainers_eval_loss_against_crumples_token_mean_as_documented(tmp_path):
    """The callback's docs say: for unpadded sequences of L tokens the Trainer's eval_loss
    is (L - 1) / L of crumple's token mean (transformers 5)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    if not transformers.__version__.startswith("5."):
        pytest.skip("the documented ratio is transformers 5's")
    from tests.test_transformers_callback import Tokens, tiny_lm

    lm = tiny_lm()
    tokens = Tokens(20, 1)  # sequences of 12 tokens, no padding
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    eval_loss = transformers.Trainer(model=lm, args=args, eval_dataset=tokens).evaluate()
    ours = cr.surface(
        lm, "model", DataLoader(tokens, batch_size=8), cr.Plane.random(lm, seed=0),
        cr.Grid([0.0], [0.0]), dtype="float64", progress=False,
    ).loss.values.item()  # fmt: skip
    assert eval_loss["eval_loss"] == pytest.approx(ours * 11 / 12, rel=1e-5)
    from crumple.integrations.transformers import LandscapeCallback

    assert "is\n    ``(L - 1) / L`` of crumple's" in LandscapeCallback.__doc__


@pytest.mark.parametrize(
    "args, named",
    [
        (["line", "--weights-b", "{missing}"], "--weights-b"),
        (
            ["surface", "--plane", "between", "--weights-b", "{b}", "--weights-c", "{missing}"],
            "--weights-c",
        ),
    ],
)
def test_a_missing_weights_file_is_named_by_its_own_option(tmp_path, capsys, args, named):
    b = tmp_path / "b.pt"
    torch.save(MLP().state_dict(), b)
    args = [a.format(missing=tmp_path / "nope.pt", b=b) for a in args]
    model = ["--model", "tests.cli_fixtures:make_mlp", "--data", "tests.cli_fixtures:digits_loader"]
    with pytest.raises(SystemExit):
        main([args[0], *model, *args[1:], "--out", str(tmp_path / "run")])
    assert f"error: {named} '{tmp_path / 'nope.pt'}': no such file" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_nan_in_the_weights_is_named_before_any_evaluation(tmp_path):
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.weight[0, 1] = float("nan")
    data = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(
        cr.CrumpleError, match=r"origin \(the model's weights\) holds nan or inf in \['weight'\]"
    ):
        cr.surface(
            net,
            F.cross_entropy,
            data,
            cr.Plane.random(net, seed=0),
            cr.Grid([0.0, 1.0], [0.0, 1.0]),
            store=tmp_path / "run",
        )
    assert not (tmp_path / "run" / "landscape.zarr").exists()


def test_a_recorder_given_a_file_for_its_folder_says_so(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(cr.CrumpleError, match="a part of its folder's path is a file"):
        cr.Recorder(torch.nn.Linear(1, 1), to=file)
    assert file.read_text() == "mine"
