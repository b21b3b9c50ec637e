"""Curvature tracked by the training callbacks (Lightning, Hugging Face) against the same
training recorded by hand with cr.Recorder(curvature=...), bit for bit; a run taken up
from a checkpoint keeps its history; the landscape folder holds it and its page draws it."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from crumple.errors import CrumpleError, CrumpleTypeError
from crumple.hessian import Tracking
from tests.cases import digits

pl = pytest.importorskip("lightning.pytorch")
from crumple.integrations.lightning import LandscapeCallback  # noqa: E402
from tests import test_lightning as lit  # noqa: E402

EVERY = 2
COMPARED = ("lambda_max", "lambda_max_residual", "directional", "trace", "threshold", "products")


def tracking(**options):
    return Tracking(F.cross_entropy, digits(128, dtype=torch.float32), every=EVERY, **options)


class HandLit(lit.Lit):
    """The Lightning module of tests/test_lightning.py recording the curvature itself."""

    def on_train_start(self):  # step 0, with the optimizer made
        track = tracking(trace=4, optimizer=self.trainer.optimizers[0])
        self.hand = cr.Recorder(self, every=EVERY, curvature=track)


def same(a, b, names=COMPARED):
    """The variables of two histories that differ in any bit."""
    assert a.step.values.tolist() == b.step.values.tolist()
    return [n for n in names if not np.array_equal(a[n].values, b[n].values, equal_nan=True)]


@pytest.fixture(scope="module")
def lightning_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightning-curvature")
    pl.seed_everything(0, verbose=False)
    hand = HandLit()
    lit.fit(hand, root=root / "hand")
    callback = LandscapeCallback(
        every=EVERY, landscape=root / "landscape", loss_fn=F.cross_entropy, num=7,
        curvature=tracking(trace=4),
    )  # fmt: skip
    checkpoints = pl.callbacks.ModelCheckpoint(
        dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1
    )
    pl.seed_everything(0, verbose=False)
    lit.fit(lit.Lit(), [callback, checkpoints], root=root)
    return hand, callback, root


def test_lightning_records_the_curvature_a_hand_loop_records(lightning_runs):
    hand, callback, _ = lightning_runs
    mine, theirs = callback.trajectory.sharpness(), hand.hand.sharpness()
    assert mine.step.values.tolist() == list(range(0, lit.STEPS + 1, EVERY))
    assert not same(mine, theirs), f"{same(mine, theirs)} differ from the hand loop"
    assert np.allclose(mine.threshold, 2 / 0.5)  # SGD, lr 0.5
    assert np.isnan(mine.directional[0]) and np.isfinite(mine.directional[1:]).all()
    assert mine.loss.values[1:].tolist() == theirs.loss.values[1:].tolist()


def test_the_landscape_folder_holds_the_history_and_its_page_draws_it(lightning_runs):
    _, callback, root = lightning_runs
    stored = cr.open(root / "landscape")["sharpness"]
    assert not same(stored, callback.trajectory.sharpness(), (*COMPARED, "loss"))
    page = (root / "landscape" / "landscape.html").read_text()
    assert "step-mark" in page


def test_a_lightning_run_taken_up_from_a_checkpoint_keeps_its_history(lightning_runs, tmp_path):
    _, callback, root = lightning_runs
    resumed = LandscapeCallback(every=EVERY, curvature=tracking(trace=4))
    pl.seed_everything(0, verbose=False)
    with warnings.catch_warnings():  # the checkpoint's ModelCheckpoint is not here
        warnings.simplefilter("ignore")
        lit.fit(lit.Lit(), [resumed], ckpt_path=str(root / "ckpt" / "epoch=0-step=4.ckpt"),
                root=tmp_path)  # fmt: skip
    stored = torch.load(root / "ckpt" / "epoch=0-step=4.ckpt", weights_only=True)
    assert [r["step"] for r in stored["callbacks"][callback.state_key]["curvature"]] == [0, 2, 4]
    got, whole = resumed.trajectory.sharpness(), callback.trajectory.sharpness()
    assert got.step.values.tolist() == [0, 2, 4, 6, 8]
    # before the checkpoint: the first run's rows (Lightning does not take up the shuffled
    # loader's order mid-epoch, so the steps after it train on other batches)
    before = got.sel(step=[0, 2, 4]), whole.sel(step=[0, 2, 4])
    assert not same(*before), f"{same(*before)} differ from the run without a stop"
    assert np.isfinite(got.lambda_max).all() and np.isfinite(got.directional[1:]).all()


def test_a_streamed_run_taken_up_again_drops_the_rows_after_its_checkpoint(
    lightning_runs, tmp_path
):
    _, callback, root = lightning_runs
    folder = tmp_path / "path"
    first = LandscapeCallback(every=EVERY, to=folder, curvature=tracking())
    pl.seed_everything(0, verbose=False)
    lit.fit(lit.Lit(), [first], root=tmp_path)
    again = LandscapeCallback(every=EVERY, to=folder, curvature=tracking())
    pl.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lit.fit(lit.Lit(), [again], ckpt_path=str(root / "ckpt" / "epoch=0-step=4.ckpt"),
                root=tmp_path)  # fmt: skip
    on_disk = cr.Trajectory.load(folder).sharpness()
    assert on_disk.step.values.tolist() == [0, 2, 4, 6, 8]
    whole = callback.trajectory.sharpness()
    kept = on_disk.lambda_max.values[:3], whole.lambda_max.values[:3]  # steps 0, 2, 4
    assert np.array_equal(*kept), kept
    assert len((folder / "curvature.jsonl").read_text().splitlines()) == 5  # none twice


def test_curvature_that_is_not_a_tracking_is_refused():
    with pytest.raises(CrumpleTypeError, match="crumple.hessian.Tracking"):
        LandscapeCallback(curvature={"every": 5})


def test_a_loss_without_a_second_derivative_is_refused_before_training(tmp_path):
    def distance(pred, y):
        return torch.cdist(pred, F.one_hot(y, 10).float()).mean()

    callback = LandscapeCallback(
        every=EVERY, curvature=Tracking(distance, digits(64, dtype=torch.float32))
    )
    with pytest.raises(CrumpleError, match="not twice differentiable"):
        lit.fit(lit.Lit(), [callback], root=tmp_path)


transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from crumple.integrations.transformers import LandscapeCallback as HFCallback  # noqa: E402
from tests import test_transformers_callback as hf  # noqa: E402


class HandHF(transformers.TrainerCallback):
    """A user's own record with curvature, counting the steps itself."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        track = Tracking("model", hf.eval_loader(), every=EVERY, optimizer=optimizer)
        self.recorder = cr.Recorder(model, every=EVERY, curvature=track)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.recorder.record()


@pytest.mark.slow
def test_hugging_face_records_the_curvature_a_hand_loop_records(tmp_path):
    hand = HandHF()
    hf.train([hand], tmp_path / "hand")
    callback = HFCallback(every=EVERY, curvature=Tracking("model", hf.eval_loader(), every=EVERY))
    hf.train([callback], tmp_path / "callback")
    mine, theirs = callback.trajectory.sharpness(), hand.recorder.sharpness()
    assert mine.step.values.tolist() == list(range(0, hf.STEPS + 1, EVERY))
    names = (*COMPARED[:3], "threshold", "preconditioned")
    assert not same(mine, theirs, names), f"{same(mine, theirs, names)} differ"
    assert float(mine.threshold[0]) == pytest.approx(38 / 1e-2)  # AdamW, beta1 0.9, lr 1e-2
    assert np.all(np.diff(mine.threshold.values) > 0)  # the linear schedule lowers the lr
    assert np.isnan(mine.preconditioned[0]) and np.isfinite(mine.preconditioned[1:]).all()
    assert math.isfinite(float(mine.loss[1]))  # the loss the Trainer logged


def test_hugging_face_refuses_tracking_on_the_training_batch():
    with pytest.raises(CrumpleError, match="does not hand to callbacks"):
        HFCallback(curvature=Tracking("model"))


@pytest.mark.slow
def test_a_hugging_face_run_resumed_from_a_checkpoint_keeps_its_history(tmp_path):
    folder = tmp_path / "path"

    def tracking():
        return Tracking("model", hf.eval_loader(), every=EVERY)

    first = HFCallback(every=EVERY, to=folder, curvature=tracking())
    hf.train([first], tmp_path, save_strategy="steps", save_steps=3)
    before = first.trajectory.sharpness()
    again = HFCallback(every=EVERY, to=folder, curvature=tracking())
    hf.train([again], tmp_path, resume=str(tmp_path / "checkpoint-3"))
    on_disk = cr.Trajectory.load(folder).sharpness()
    assert on_disk.step.values.tolist() == [0, 2, 4, 6]  # each step once
    kept = on_disk.sel(step=[0, 2]), before.sel(step=[0, 2])  # before the checkpoint
    assert not same(*kept, names=("lambda_max", "directional", "threshold")), same(*kept)
    assert np.isfinite(on_disk.lambda_max).all()
