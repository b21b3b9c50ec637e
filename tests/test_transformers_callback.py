"""The Hugging Face Trainer callback against a hand record of the same training, its
landscape on the Trainer's own eval loader, taking up a run from a checkpoint, the main
process only, and `crumple surface --model hf:FOLDER`."""

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import crumple as cr
from crumple import report
from crumple.cli import main
from crumple.errors import CrumpleError
from crumple.specs import hf_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's own requirement
from crumple.integrations.transformers import LandscapeCallback  # noqa: E402

EVERY, STEPS, VOCAB = 2, 6, 40
DATA = "tests.test_transformers_callback:eval_loader"


class Tokens(Dataset):
    """Random token sequences, the labels the inputs themselves (a causal LM shifts them)."""

    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(1, VOCAB, (n, 12), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_lm():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def eval_loader():
    return DataLoader(Tokens(16, 1), batch_size=8)


class ByHand(transformers.TrainerCallback):
    """A user's own record: cr.Recorder counting the steps itself."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.recorder = cr.Recorder(model, every=EVERY)  # step 0, before any update

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.recorder.record()


def train(callbacks, root, resume=None, **options):
    model = tiny_lm()
    settings = dict(
        output_dir=str(root), max_steps=STEPS, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, learning_rate=1e-2, report_to=[], use_cpu=True,
        logging_steps=1, save_strategy="no", eval_strategy="steps", eval_steps=3,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    args = transformers.TrainingArguments(**{**settings, **options})
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=Tokens(64, 0), eval_dataset=Tokens(16, 1),
        callbacks=list(callbacks),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


@pytest.fixture(scope="module")
def runs_by_hand_and_callback(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    hand = ByHand()
    by_hand, _ = train([hand], root / "hand")
    callback = LandscapeCallback(every=EVERY, landscape=True, num=7)
    model, trainer = train([callback], root / "callback")
    return SimpleNamespace(
        hand=hand, by_hand=by_hand, callback=callback, model=model, trainer=trainer, root=root
    )


@pytest.mark.slow
def test_callback_records_the_steps_a_hand_record_gives(runs_by_hand_and_callback):
    r = runs_by_hand_and_callback
    hand, got = r.hand.recorder.trajectory, r.callback.trajectory
    assert got.steps == hand.steps == list(range(0, STEPS + 1, EVERY))
    for k in range(len(hand)):
        mine, theirs = got.snapshot(k), hand.snapshot(k)
        differ = [n for n in theirs if not torch.equal(mine[n], theirs[n])]
        assert mine.keys() == theirs.keys() and not differ, f"step {hand.steps[k]}: {differ}"
    logged = {h["step"]: h["loss"] for h in r.trainer.state.log_history if "loss" in h}
    assert math.isnan(got.losses[0])
    assert got.losses[1:] == [logged[s] for s in got.steps[1:]]


@pytest.mark.slow
def test_landscape_on_the_eval_loader_holds_the_path(runs_by_hand_and_callback):
    r = runs_by_hand_and_callback
    folder = r.root / "callback" / "landscape"
    for name in ("landscape.zarr", "plane.safetensors", "landscape.html"):
        assert (folder / name).exists(), name
    run = cr.open_run(folder)
    ds, path = run["surface"], run["path"]
    assert ds.loss.shape == (7, 7) and ds.attrs["plane_kind"] == "pca"
    assert ds.attrs["n_target_tokens"] == 16 * 11  # the eval set's shifted labels
    assert report.outside({"path": path}, cr.Grid(ds.alpha.values, ds.beta.values)) == 0
    assert r.callback.run.page == folder / "landscape.html"
    assert float(path.off_plane[-1]) == 0.0


@pytest.mark.slow
def test_the_landscape_leaves_the_model_as_training_left_it(runs_by_hand_and_callback):
    r = runs_by_hand_and_callback
    ours, theirs = r.model.state_dict(), r.by_hand.state_dict()
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)
    flags = {n: m.training for n, m in r.by_hand.named_modules()}
    assert {n: m.training for n, m in r.model.named_modules()} == flags
    assert all(p.requires_grad for p in r.model.parameters())


@pytest.mark.slow
def test_a_resumed_run_goes_on_in_its_folder(runs_by_hand_and_callback, tmp_path):
    r = runs_by_hand_and_callback
    folder = tmp_path / "path"
    first = LandscapeCallback(every=EVERY, to=folder)
    train([first], tmp_path, save_strategy="steps", save_steps=3)
    again = LandscapeCallback(every=EVERY, to=folder)
    train([again], tmp_path, resume=str(tmp_path / "checkpoint-3"))
    on_disk = cr.Trajectory.load(folder)
    assert again.trajectory.steps == on_disk.steps == [0, 2, 4, 6]
    for k in (0, 1):  # before the checkpoint: as in the run without one
        before = r.callback.trajectory.snapshot(k)
        assert all(torch.equal(on_disk.snapshot(k)[n], before[n]) for n in before)
    with pytest.raises(CrumpleError, match="already holds a trajectory"):
        train([LandscapeCallback(to=folder)], tmp_path / "fresh")  # a new run, not a resumed one


def test_only_the_main_process_records(tmp_path):
    callback = LandscapeCallback(every=1, to=tmp_path / "path", landscape=tmp_path / "land")
    args = SimpleNamespace(
        output_dir=str(tmp_path), eval_strategy="no", load_best_model_at_end=False
    )
    state = SimpleNamespace(is_world_process_zero=False, global_step=0)
    control = SimpleNamespace(should_log=True)
    callback.on_train_begin(args, state, control, model=tiny_lm())
    for step in (1, 2):
        state.global_step = step
        callback.on_step_end(args, state, control)
        callback.on_log(args, state, control, logs={"loss": 1.0})
    callback.on_train_end(args, state, control, model=tiny_lm())
    assert callback.trajectory is None
    assert not (tmp_path / "path").exists() and not (tmp_path / "land").exists()


@pytest.mark.parametrize("best_at_end", [False, True])
def test_the_best_model_loaded_at_the_end_is_not_recorded_as_the_last_step(tmp_path, best_at_end):
    callback = LandscapeCallback(every=2)
    args = SimpleNamespace(
        output_dir=str(tmp_path), eval_strategy="no", load_best_model_at_end=best_at_end
    )
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    control = SimpleNamespace(should_log=False)
    model = tiny_lm()
    callback.on_train_begin(args, state, control, model=model)
    for step in range(1, 6):
        state.global_step = step
        callback.on_step_end(args, state, control)
    callback.on_train_end(args, state, control, model=model)
    assert callback.trajectory.steps == ([0, 2, 4] if best_at_end else [0, 2, 4, 5])


def test_a_landscape_without_eval_data_is_refused_before_training(tmp_path):
    callback = LandscapeCallback(landscape=True)
    args = SimpleNamespace(output_dir=str(tmp_path), eval_strategy="no")
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    with pytest.raises(CrumpleError, match="pass data=.*eval_strategy="):
        callback.on_train_begin(args, state, SimpleNamespace(), model=tiny_lm())


@pytest.mark.slow
def test_crumple_surface_reads_a_saved_hugging_face_model(runs_by_hand_and_callback, capsys):
    r = runs_by_hand_and_callback
    saved, out = r.root / "saved", r.root / "cli"
    r.model.save_pretrained(saved)
    main(
        ["surface", "--model", f"hf:{saved}", "--data", DATA, "--loss", "model"]
        + ["--grid", "-1:1:3", "--strategy", "loop", "--out", str(out)]
    )
    capsys.readouterr()
    plane, grid = cr.Plane.random(r.model, seed=0), cr.Grid(np.linspace(-1, 1, 3), [-1, 0, 1])
    ds = cr.surface(r.model, "model", eval_loader(), plane, grid, strategy="loop")
    np.testing.assert_array_equal(cr.open_run(out)["surface"].loss.values, ds.loss.values)
    # the same weights from pytorch_model.bin, read without unpickling code
    (saved / "model.safetensors").unlink()
    torch.save(r.model.state_dict(), saved / "pytorch_model.bin")
    loaded = hf_model(saved).state_dict()
    assert all(torch.equal(loaded[n], v) for n, v in r.model.state_dict().items())


def test_folders_that_are_not_models_are_refused(tmp_path, monkeypatch):
    with pytest.raises(CrumpleError, match="holds no config.json"):
        hf_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CrumpleError, match="names no model class"):
        hf_model(tmp_path)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 1}
    (tmp_path / "config.json").write_text(json.dumps(config | {"n_embd": 8, "n_head": 2}))
    with pytest.raises(CrumpleError, match="holds no model.safetensors or pytorch_model.bin"):
        hf_model(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CrumpleError, match=r"pip install 'crumple\[hf\]'"):
        hf_model(tmp_path)


def test_a_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "crumple.integrations.transformers", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'crumple\[hf\]'"):
        import crumple.integrations.transformers  # noqa: F401
