"""The Recorder keeps both ends of a run (the initial weights when made, the final ones when
training ends) and each snapshot's buffers; a path's true loss uses the snapshot's own
BatchNorm statistics, checked against the snapshot loaded into a copy by hand."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import crumple as cr
from crumple.integrations.tracking import Tracker
from crumple.names import TRAJECTORY_INDEX
from crumple.trajectory import index_row
from tests.cases import SmallCNN, digits

STEPS, EVERY = 22, 5


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def train(model, data, steps: int, rec=None, lr: float = 0.1, seed: int = 0):
    """SGD in train mode on ``data``, ``rec.record`` after each step."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (32,))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        opt.step()
        if rec is not None:
            rec.record(loss=loss)
    model.eval()


def assert_equal_states(got: dict, want: dict, label: str) -> None:
    assert got.keys() == want.keys(), f"{label}: {sorted(got)} != {sorted(want)}"
    differ = [n for n in want if got[n].dtype != want[n].dtype or not torch.equal(got[n], want[n])]
    assert not differ, f"{label}: {differ} differ"


def full(trajectory, k: int) -> dict:
    return {**trajectory.snapshot(k), **trajectory.snapshot_buffers(k)}


@pytest.mark.parametrize("where", ["memory", "folder"])
def test_the_first_and_last_snapshots_are_the_initial_and_final_weights(where, tmp_path):
    torch.manual_seed(0)
    net = SmallCNN().float()
    initial = state(net)
    to = tmp_path / "path" if where == "folder" else None
    with cr.Recorder(net, every=EVERY, to=to) as rec:
        train(net, digits(200, torch.float32), STEPS, rec)
    trajectory = rec.trajectory if to is None else cr.Trajectory.load(to)
    assert trajectory.steps == [0, 5, 10, 15, 20, 22]
    assert_equal_states(full(trajectory, 0), initial, "step 0")
    assert_equal_states(full(trajectory, len(trajectory) - 1), state(net), "the last step")
    assert trajectory.snapshot_buffers(0)["features.1.num_batches_tracked"].item() == 0
    assert trajectory.snapshot_buffers(1)["features.1.num_batches_tracked"].item() == 5
    assert math.isnan(trajectory.losses[0]) and not math.isnan(trajectory.losses[-1])
    if to is not None:
        assert len(list(to.glob("*.safetensors"))) == 6


def test_a_last_step_that_was_recorded_is_not_kept_twice(tmp_path):
    net = nn.Linear(2, 1)
    rec = cr.Recorder(net, every=EVERY, to=tmp_path / "path", loss=2.0)
    for _ in range(20):
        with torch.no_grad():
            net.weight.add_(1.0)
        rec.record(loss=1.0)
    rec.finish()
    rec.finish()
    assert rec.trajectory.steps == [0, 5, 10, 15, 20]
    assert rec.trajectory.losses[0] == 2.0
    assert cr.Trajectory.load(tmp_path / "path").steps == [0, 5, 10, 15, 20]
    assert torch.equal(rec.trajectory.snapshot(4)["weight"], net.weight.detach())


def test_a_with_block_left_by_an_error_keeps_no_final_weights():
    net = nn.Linear(1, 1)
    with pytest.raises(RuntimeError, match="stopped"), cr.Recorder(net, every=5) as rec:
        for _ in range(3):
            rec.record()
        raise RuntimeError("stopped")
    assert rec.trajectory.steps == [0]


def test_bad_recorder_arguments_are_refused(tmp_path):
    net = nn.Linear(1, 1)
    with pytest.raises(cr.CrumpleError, match="step must be an integer"):
        cr.Recorder(net, step=-1)
    with pytest.raises(cr.CrumpleError, match="leave out to"):
        cr.Recorder(net, to=tmp_path / "x", trajectory=cr.Recorder(net).trajectory)
    with pytest.raises(cr.CrumpleError, match="one buffers dict"):
        cr.Trajectory([0], [{"w": torch.zeros(1)}], [0.0], buffers=[])


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    """A BatchNorm CNN trained in train mode (its statistics moving), recorded to a folder."""
    torch.manual_seed(0)
    net = SmallCNN().double()
    data = digits(300)
    folder = tmp_path_factory.mktemp("bn") / "path"
    with cr.Recorder(net, every=3, to=folder) as rec:
        train(net, data, 10, rec, lr=0.3)
    return net, data, cr.Trajectory.load(folder), rec.trajectory


def by_hand(net: nn.Module, weights: dict, data) -> float:
    """The loss at ``weights`` (parameters, and buffers where given): loaded into a copy."""
    work = copy.deepcopy(net).eval()
    work.load_state_dict({**work.state_dict(), **weights})
    x, y = data
    with torch.no_grad():
        return float(F.cross_entropy(work(x), y))


@pytest.mark.parametrize("strategy", ["auto", "loop", "vmap"])
def test_a_path_loss_uses_each_snapshots_own_statistics(bn_run, strategy):
    net, data, on_disk, _ = bn_run
    plane = cr.Plane.pca(on_disk)
    n = len(on_disk)
    in_memory = cr.Trajectory(
        on_disk.steps,
        [on_disk.snapshot(k) for k in range(n)],
        on_disk.losses,
        buffers=[on_disk.snapshot_buffers(k) for k in range(n)],
    )
    for trajectory in (on_disk, in_memory):
        path = cr.project(trajectory, plane, net, F.cross_entropy, data, strategy=strategy)
        assert path.step.values.tolist() == [0, 3, 6, 9, 10]
        want = [by_hand(net, full(trajectory, k), data) for k in range(len(trajectory))]
        np.testing.assert_allclose(path.loss.values, want, rtol=1e-10)
        assert "each snapshot's own" in path.attrs["statistics"]
    final_statistics = [by_hand(net, on_disk.snapshot(k), data) for k in range(n)]
    assert final_statistics[-1] == pytest.approx(path.loss.values[-1], rel=1e-10)
    moved = np.abs(np.array(final_statistics) - path.loss.values) / path.loss.values
    assert moved.max() > 1e-4, f"the statistics made no difference: {moved}"


def test_a_trajectory_without_buffers_loads_and_uses_the_models_with_a_note(bn_run, tmp_path):
    net, data, on_disk, _ = bn_run
    old = tmp_path / "old"
    old.mkdir()
    for k, step in enumerate(on_disk.steps):  # as crumple wrote them before: parameters only
        save_file(on_disk.snapshot(k), str(old / f"step_{step:09d}.safetensors"))
    (old / TRAJECTORY_INDEX).write_text("".join(map(index_row, on_disk.steps, on_disk.losses)))
    trajectory = cr.Trajectory.load(old)
    assert trajectory.buffer_counts() == (0, 5) and trajectory.snapshot_buffers(0) == {}
    path = cr.project(trajectory, cr.Plane.pca(trajectory), net, F.cross_entropy, data)
    want = [by_hand(net, trajectory.snapshot(k), data) for k in range(len(trajectory))]
    np.testing.assert_allclose(path.loss.values, want, rtol=1e-10)
    assert "older crumple" in path.attrs["statistics"]


def test_recalibrated_path_says_so(bn_run):
    net, data, trajectory, _ = bn_run
    plane = cr.Plane.pca(trajectory)
    path = cr.project(trajectory, plane, net, F.cross_entropy, data, recalibrate=data[0])
    assert "recalibrate" in path.attrs["statistics"]


def test_snapshot_files_keep_the_buffers_types_and_name_them(bn_run):
    _, _, trajectory, _ = bn_run
    file = trajectory.folder / "step_000000000.safetensors"
    with safe_open(str(file), framework="pt") as f:
        names = json.loads(f.metadata()["crumple_buffers"])
        assert f.get_tensor("features.1.num_batches_tracked").dtype == torch.int64
        assert f.get_tensor("features.1.running_var").dtype == torch.float64
    assert set(names) == {f"features.1.{n}" for n in ("running_mean", "running_var")} | {
        "features.1.num_batches_tracked"
    }
    assert "features.1.running_mean" not in trajectory.names()


def test_a_model_without_buffers_gets_no_statistics_note():
    net = nn.Linear(2, 1)
    rec = cr.Recorder(net)
    x = torch.randn(4, 2)
    path = cr.project(rec.trajectory, cr.Plane.axes(net, "bias"), net, F.mse_loss, (x, x[:, :1]))
    assert "statistics" not in path.attrs


def test_a_checkpoint_of_the_tracker_keeps_the_buffers():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    tracker = Tracker(every=2)
    tracker.start(net, step=0, main=True)
    for step in range(1, 4):
        net.train()(torch.randn(8, 2))
        tracker.after_step(step)
    saved = tracker.state()
    again = Tracker(every=2)
    again.load(saved)
    again.start(net, step=3, main=True)
    again.finish(3)
    assert again.trajectory.steps == [0, 2, 3]
    assert again.trajectory.snapshot_buffers(1)["1.num_batches_tracked"].item() == 2
    assert torch.equal(again.trajectory.snapshot_buffers(2)["1.running_mean"], net[1].running_mean)


def test_the_lightning_callback_records_both_ends_with_buffers(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from crumple.integrations.lightning import LandscapeCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = SmallCNN()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    lit = Lit()
    initial = state(lit.net)
    x, y = digits(160, torch.float32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    callback = LandscapeCallback(
        every=3,
        to=tmp_path / "path",
        module="net",
        landscape=tmp_path / "landscape",
        loss_fn=F.cross_entropy,
        data=(x, y),
        num=3,
        dtype="float64",
    )
    trainer = pl.Trainer(
        max_steps=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(lit, loader)
    trajectory = cr.Trajectory.load(tmp_path / "path")
    assert trajectory.steps == [0, 3, 6, 8]
    assert_equal_states(full(trajectory, 0), initial, "step 0")
    assert_equal_states(full(trajectory, 3), state(lit.net), "step 8")
    path = cr.open_run(tmp_path / "landscape")["path"]  # each point with its own statistics
    want = [by_hand(lit.net.double(), full(trajectory, k), (x.double(), y)) for k in range(4)]
    np.testing.assert_allclose(path.loss.values, want, rtol=1e-10)


def test_the_run_folder_info_and_page_say_which_statistics_the_path_uses(bn_run, tmp_path):
    from crumple import report
    from crumple.cli.info import describe
    from crumple.landscape import Landscape

    net, data, trajectory, _ = bn_run
    landscape = Landscape(net, F.cross_entropy, data, progress=False)
    plane = cr.Plane.pca(trajectory)
    path = landscape.project(trajectory, plane)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    run = report.write_run(tmp_path / "run", landscape, plane, grid, paths={"path": path})
    assert "each snapshot's own" in cr.open_run(tmp_path / "run")["path"].attrs["statistics"]
    assert "statistics: loss: each snapshot's own" in describe(tmp_path / "run")
    assert "BatchNorm statistics: loss: each snapshot" in run.page.read_text()


def test_a_batchnorm_surface_says_which_statistics_it_uses():
    from crumple.plot.report import facts

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    plane, grid = cr.Plane.random(net, seed=0), cr.Grid(np.linspace(-1, 1, 3), [0.0, 1.0])
    ds = cr.surface(net, torch.nn.functional.cross_entropy, (x, y), plane, grid)
    assert "running statistics at every point" in facts(ds)["batchnorm"]
    assert "--recalibrate" in ds.attrs["batchnorm"]
    fixed = cr.surface(net, torch.nn.functional.cross_entropy, (x, y), plane, grid, recalibrate=x)
    assert "batchnorm" not in fixed.attrs and "recalibrated" in fixed.attrs
    plain = torch.nn.Linear(4, 2)
    ds = cr.surface(plain, torch.nn.functional.cross_entropy, (x, y), cr.Plane.random(plain), grid)
    assert "batchnorm" not in ds.attrs
