"""The Lightning callback against a hand record of the same training, its landscape, taking
up a run from a checkpoint, rank 0 only, and `crumple surface --weights x.ckpt`."""

import math
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import crumple as cr
from crumple import report
from crumple.cli import main
from crumple.errors import CrumpleError
from crumple.integrations.tracking import Tracker
from crumple.specs import load_weights, read_state_dict
from tests.cases import MLP, digits

pl = pytest.importorskip("lightning.pytorch")
from crumple.integrations.lightning import LandscapeCallback  # noqa: E402

EVERY, STEPS = 2, 8


class Lit(pl.LightningModule):
    """An MLP on digits; ``hand`` records the weights itself, as a user's loop would."""

    def __init__(self, hand: bool = False) -> None:
        super().__init__()
        self.net = MLP()
        self.hand = cr.Recorder(self, every=EVERY) if hand else None  # keeps step 0 now

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.hand is not None:
            self.hand.record(loss=outputs["loss"])  # one call per optimizer step


def make_net():
    torch.manual_seed(0)
    return MLP()


def make_lit():
    torch.manual_seed(0)
    return Lit()


def train_loader():
    x, y = digits(256, dtype=torch.float32)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def val_loader():
    x, y = digits(128, dtype=torch.float32)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def fit(model, callbacks=(), steps=STEPS, ckpt_path=None, root="."):
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=list(callbacks),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(root),
    )
    trainer.fit(model, train_loader(), val_loader(), ckpt_path=ckpt_path)
    return trainer


def trained(hand: bool, callbacks=(), **options):
    pl.seed_everything(0, verbose=False)
    model = Lit(hand=hand)
    return model, fit(model, callbacks, **options)


@pytest.fixture(scope="module")
def runs_by_hand_and_callback(tmp_path_factory):
    """One training recorded by hand, the same training with the callback (and a landscape
    on the validation loader, which the trainer never ran), and a checkpoint at step 4."""
    root = tmp_path_factory.mktemp("lightning")
    by_hand, _ = trained(hand=True, root=root)
    flags = {n: m.training for n, m in by_hand.named_modules()}
    callback = LandscapeCallback(
        every=EVERY, landscape=root / "landscape", loss_fn=F.cross_entropy, num=9
    )
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1
    )
    model, _ = trained(hand=False, callbacks=[callback, checkpoints], root=root)
    return SimpleNamespace(by_hand=by_hand, flags=flags, model=model, callback=callback, root=root)


def test_callback_records_the_steps_a_hand_record_gives(runs_by_hand_and_callback):
    r = runs_by_hand_and_callback
    hand, got = r.by_hand.hand.trajectory, r.callback.trajectory
    assert got.steps == hand.steps == list(range(0, STEPS + 1, EVERY))
    assert math.isnan(got.losses[0]) and got.losses[1:] == hand.losses[1:]
    for k in range(len(hand)):
        mine, theirs = got.snapshot(k), hand.snapshot(k)
        assert mine.keys() == theirs.keys()
        differ = [n for n in mine if not torch.equal(mine[n], theirs[n])]
        assert not differ, f"step {hand.steps[k]}: {differ} differ from the hand record"


def test_landscape_is_written_with_the_path_on_the_grid(runs_by_hand_and_callback):
    r = runs_by_hand_and_callback
    folder = r.root / "landscape"
    for name in ("landscape.zarr", "plane.safetensors", "landscape.html"):
        assert (folder / name).exists(), name
    run = cr.open_run(folder)
    ds, path = run["surface"], run["path"]
    assert ds.loss.shape == (9, 9) and ds.attrs["plane_kind"] == "pca"
    assert list(path.step.values) == r.callback.trajectory.steps
    grid = cr.Grid(ds.alpha.values, ds.beta.values)
    assert report.outside({"path": path}, grid) == 0
    for dim in ("alpha", "beta"):  # with room on both sides
        assert ds[dim].values[0] < path[dim].values.min() < path[dim].values.max()
        assert path[dim].values.max() < ds[dim].values[-1]
    assert float(path.off_plane[-1]) == 0.0  # the final weights are the plane's origin
    assert "PC1" in (folder / "landscape.html").read_text()


def test_the_landscape_leaves_the_model_as_training_left_it(runs_by_hand_and_callback):
    r = runs_by_hand_and_callback
    ours, theirs = r.model.state_dict(), r.by_hand.state_dict()
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
    assert {n: m.training for n, m in r.model.named_modules()} == r.flags
    assert all(p.requires_grad for p in r.model.parameters())
    x, y = next(iter(train_loader()))  # and training goes on
    loss = F.cross_entropy(r.model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in r.model.parameters())


def test_a_run_taken_up_from_a_checkpoint_goes_on_recording(runs_by_hand_and_callback, tmp_path):
    r = runs_by_hand_and_callback
    ckpt = r.root / "ckpt" / "epoch=0-step=4.ckpt"
    stored = torch.load(ckpt, weights_only=True)  # the callback's state needs no pickle
    assert stored["callbacks"][r.callback.state_key]["steps"] == [0, 2, 4]
    first = LandscapeCallback(every=EVERY, to=tmp_path / "path")  # streamed: a folder
    pl.seed_everything(0, verbose=False)
    fit(Lit(), [first], root=tmp_path)
    again, streamed = LandscapeCallback(every=EVERY), LandscapeCallback(every=EVERY, to=first.to)
    pl.seed_everything(0, verbose=False)
    with warnings.catch_warnings():  # that the checkpoint's ModelCheckpoint is not here
        warnings.simplefilter("ignore")
        fit(Lit(), [again, streamed], ckpt_path=str(ckpt), root=tmp_path)
    assert again.trajectory.steps == streamed.trajectory.steps == [0, 2, 4, 6, 8]
    for k in range(3):  # the steps before the checkpoint: the first run's
        before = r.callback.trajectory.snapshot(k)
        assert all(torch.equal(again.trajectory.snapshot(k)[n], before[n]) for n in before)
    on_disk = cr.Trajectory.load(first.to)
    assert on_disk.steps == [0, 2, 4, 6, 8] and len(list(first.to.glob("*.safetensors"))) == 5


def test_only_rank_zero_records(tmp_path):
    callback = LandscapeCallback(
        every=1, to=tmp_path / "path", landscape=tmp_path / "land", loss_fn=F.cross_entropy
    )
    trainer = SimpleNamespace(
        is_global_zero=False, global_step=0, default_root_dir=tmp_path, accumulate_grad_batches=1
    )
    model = make_lit()
    callback.on_train_start(trainer, model)
    for step in (1, 2, 3):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, model, {"loss": torch.tensor(1.0)}, None, 0)
    callback.on_train_end(trainer, model)
    assert callback.trajectory is None and callback.state_dict() == {}
    assert not (tmp_path / "path").exists() and not (tmp_path / "land").exists()


def test_a_landscape_without_data_is_refused_before_training(tmp_path):
    callback = LandscapeCallback(landscape=True, loss_fn=F.cross_entropy)
    source = SimpleNamespace(is_defined=lambda: False)
    trainer = SimpleNamespace(
        is_global_zero=True,
        global_step=0,
        default_root_dir=tmp_path,
        val_dataloaders=None,
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(val_loop=SimpleNamespace(_data_source=source))
        ),
    )
    with pytest.raises(CrumpleError, match="data=your_loader, or give trainer.fit"):
        callback.on_train_start(trainer, make_lit())


@pytest.mark.parametrize(
    "options, match",
    [
        ({"every": 0}, "every must be a positive"),
        ({"landscape": True}, "loss_fn=None"),
        ({"grid": "wide"}, "grid must be None"),
        ({"plane": "hessian"}, "plane must be one of"),
        ({"store": "x"}, "store= is not an option"),
        ({"chunks": 4}, "unknown option 'chunks'"),
        ({"strategy": "fast"}, "strategy must be 'auto' or one of"),
        ({"module": 3}, "module must be the name"),
    ],
)
def test_bad_arguments_are_refused_when_the_callback_is_made(options, match):
    with pytest.raises(CrumpleError, match=match):
        LandscapeCallback(**options)


@pytest.mark.parametrize("factory", ["make_net", "make_lit"])
def test_crumple_surface_reads_a_lightning_checkpoint(runs_by_hand_and_callback, factory, capsys):
    """The factory builds the inner network (keys carry the prefix ``net.``) or the
    LightningModule itself: the surface is the one of the trained model in memory."""
    r = runs_by_hand_and_callback
    (ckpt,), out = (r.root / "ckpt").glob("*step=8.ckpt"), r.root / f"cli-{factory}"
    main(
        ["surface", "--model", f"tests.test_lightning:{factory}", "--weights", str(ckpt)]
        + ["--data", "tests.test_lightning:val_loader", "--grid", "-1:1:5", "--out", str(out)]
        + ["--strategy", "loop"]
    )
    capsys.readouterr()
    model = r.model.net if factory == "make_net" else r.model
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5))
    ds = cr.surface(model, F.cross_entropy, val_loader(), plane, grid, strategy="loop")
    np.testing.assert_array_equal(cr.open_run(out)["surface"].loss.values, ds.loss.values)


def test_a_checkpoint_that_needs_pickle_is_refused(tmp_path):
    file = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": make_net().state_dict(), "hparams": SimpleNamespace(lr=0.1)}, file)
    with pytest.raises(CrumpleError, match="never unpickles code") as e:
        read_state_dict(file, "--weights")
    assert "weights_only=False" in str(e.value) and "SimpleNamespace" in str(e.value)


def test_keys_under_a_deeper_prefix_are_read_and_others_left_out(tmp_path):
    torch.manual_seed(1)
    file, trained = tmp_path / "deeper.ckpt", MLP()
    state = {f"model.encoder.{k}": v for k, v in trained.state_dict().items()}
    state["loss_fn.weight"] = torch.ones(10)  # another attribute of the LightningModule
    torch.save({"state_dict": state}, file)
    model = make_net()
    assert not torch.equal(model.net[1].weight, trained.net[1].weight)
    load_weights(model, str(file), "--weights")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())


def test_keys_that_fit_no_prefix_are_listed(tmp_path):
    file = tmp_path / "other.ckpt"
    state = {f"model.encoder.{k}": v for k, v in make_net().state_dict().items()}
    del state["model.encoder.net.4.weight"]  # no prefix leaves the model's keys
    torch.save({"state_dict": state}, file)
    with pytest.raises(CrumpleError, match="the file's keys are like") as e:
        load_weights(make_net(), str(file), "--weights")
    assert "model.encoder.net.1.bias" in str(e.value) and "net.1.bias" in str(e.value)


def test_weights_under_two_fitting_prefixes_are_refused_not_guessed(tmp_path):
    file = tmp_path / "distill.ckpt"
    weights = make_net().state_dict()
    state = {f"{who}.{k}": v for who in ("student", "teacher") for k, v in weights.items()}
    torch.save({"state_dict": state}, file)
    with pytest.raises(CrumpleError, match=r"2 prefixes, \['student\.', 'teacher\.'\]"):
        load_weights(make_net(), str(file), "--weights")


def test_a_missing_extra_says_what_to_install(monkeypatch):
    for name in ("lightning", "lightning.pytorch"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "crumple.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'crumple\[lightning\]'"):
        import crumple.integrations.lightning  # noqa: F401


def test_import_crumple_imports_no_framework():
    code = (
        "import sys, crumple, crumple.integrations, crumple.integrations.tracking; "
        "print(sorted(m for m in ('lightning', 'transformers', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def tracked(every=1, calls_per_step=1, **options):
    """A hand-written loop that tells a Tracker (the callbacks' shared part) each step."""
    net, tracker = make_net(), Tracker(every=every, **options)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    tracker.start(net, 0, main=True)
    for step, (x, y) in enumerate(train_loader(), 1):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for _ in range(calls_per_step):  # as under gradient accumulation
            tracker.after_step(step, loss.detach())
    tracker.finish(step)
    return net, tracker


def test_grid_auto_spans_the_rise_and_the_path(tmp_path):
    options = dict(landscape=True, loss_fn=F.cross_entropy, grid="auto", num=7)
    net, tracker = tracked(every=3, calls_per_step=2, **options)
    assert tracker.trajectory.steps == [0, 3, 6, 8]  # once per step; the last one too
    run = tracker.write_landscape(net, val_loader(), tmp_path / "auto")
    plane = cr.Plane.load(tmp_path / "auto" / "plane.safetensors")
    auto = cr.Grid.auto(net, F.cross_entropy, val_loader(), plane, num=7)
    ds = run.surface
    assert report.outside(run.paths, cr.Grid(ds.alpha.values, ds.beta.values)) == 0
    for dim, axis in zip(("alpha", "beta"), auto.axes):
        assert ds[dim].values[0] <= axis[0] and axis[-1] <= ds[dim].values[-1]


def test_a_grid_the_path_leaves_is_warned_and_a_short_path_skipped(tmp_path):
    small = cr.Grid([-1e-3, 1e-3], [-1e-3, 1e-3])
    net, tracker = tracked(landscape=True, loss_fn=F.cross_entropy, grid=small)
    with pytest.warns(UserWarning, match="path points lie outside the grid"):
        tracker.write_landscape(net, val_loader(), tmp_path / "small")
    net, tracker = tracked(every=100, landscape=True, loss_fn=F.cross_entropy)
    with pytest.warns(UserWarning, match="needs 3 recorded steps"):
        assert tracker.write_landscape(net, val_loader(), tmp_path / "short") is None


class Accumulating(Lit):
    """Keeps what training_step returned, by the global step it was returned at."""

    def __init__(self):
        super().__init__()
        self.returned = {}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.returned.setdefault(self.trainer.global_step + 1, []).append(float(loss))
        return loss


def test_under_gradient_accumulation_a_step_keeps_the_mean_of_its_micro_batches():
    pl.seed_everything(0, verbose=False)
    model, callback = Accumulating(), LandscapeCallback(every=1)
    trainer = pl.Trainer(
        max_steps=3,
        accumulate_grad_batches=2,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, train_loader())
    t = callback.trajectory
    assert t.steps == [0, 1, 2, 3]
    for step, loss in zip(t.steps[1:], t.losses[1:]):
        assert len(model.returned[step]) == 2
        assert loss == pytest.approx(np.mean(model.returned[step]), rel=1e-6), step


def test_a_second_run_from_step_0_starts_a_new_trajectory_or_is_refused(tmp_path):
    net = make_net()
    tracker = Tracker(every=1)
    tracker.start(net, 0, main=True)
    tracker.after_step(1, torch.tensor(0.5))
    first = tracker.trajectory
    tracker.start(net, 0, main=True)  # the same callback, training again from the start
    assert tracker.trajectory is not first and tracker.trajectory.steps == [0]
    assert first.steps == [0, 1]  # the first run's trajectory is left as it was
    tracker = Tracker(every=1, to=tmp_path / "traj")
    tracker.start(net, 0, main=True)
    tracker.after_step(1)
    with pytest.raises(CrumpleError, match="with another to= folder"):
        tracker.start(net, 0, main=True)
    assert cr.Trajectory.load(tmp_path / "traj").steps == [0, 1]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"metrics": 3}, "metrics"),
        ({"check": -1}, "check must be a number of points"),
        ({"num": 10**6}, "num must be a number of grid points per axis from 2 to"),
        ({"grid": cr.Grid([0.0, 1.0])}, "has one axis"),
        ({"grid": np.linspace(-1, 1, 5)}, "grid must be None"),
    ],
)
def test_what_would_fail_at_the_end_is_refused_when_the_callback_is_made(options, match):
    with pytest.raises((CrumpleError, TypeError), match=match):
        LandscapeCallback(landscape=True, loss_fn=F.cross_entropy, **options)


def test_a_loss_that_does_not_fit_the_data_is_refused_before_training(tmp_path):
    callback = LandscapeCallback(landscape=tmp_path / "land", loss_fn=F.mse_loss, data=val_loader())
    with pytest.raises(CrumpleError, match="the model or the loss fails on them"):
        fit(make_lit(), [callback], root=tmp_path)
    assert callback.trajectory is None or callback.trajectory.steps == []
