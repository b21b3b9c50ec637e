"""Hugging Face models and batches: dict batches with padding, the loss the model computes
as the exact mean over target tokens, streamed data, and the command line's --loss model."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crumple as cr
from tests.cases import assert_untouched, snapshot

transformers = pytest.importorskip("transformers")

VOCAB = 40


def tiny_gpt2(seed: int = 0):
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config).eval()


def padded_batches(n_batches=3, rows=4, length=12, seed=0):
    """Tokenized batches as a collator pads them: right padding, labels -100 on padding."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(1, VOCAB, (rows, length), generator=g)
        lengths = torch.randint(2, length + 1, (rows,), generator=g)
        mask = (torch.arange(length)[None] < lengths[:, None]).long()
        ids = ids * mask
        labels = ids.masked_fill(mask == 0, -100)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def token_loop(model, batches, weights):
    """An independent loop: each point's weights in a copy, the summed cross entropy over
    the shifted target tokens of every batch, divided by their number."""
    work = copy.deepcopy(model).double()
    out = []
    with torch.no_grad():
        for point in weights:
            for name, p in work.named_parameters():
                p.copy_(point[name])
            total, count = 0.0, 0
            for b in batches:
                logits = work(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                targets = b["labels"][:, 1:]
                total += float(
                    F.cross_entropy(
                        logits[:, :-1].reshape(-1, VOCAB),
                        targets.reshape(-1),
                        ignore_index=-100,
                        reduction="sum",
                    )
                )
                count += int((targets != -100).sum())
            out.append(total / count)
    return np.array(out)


@pytest.mark.parametrize("strategy", ["auto", "loop", "vmap"])
def test_model_loss_is_the_token_mean_of_an_independent_loop_float64(strategy):
    model, batches = tiny_gpt2(), padded_batches()
    plane = cr.Plane.random(model, seed=0)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3))
    before = snapshot(model)
    ds = cr.surface(model, "model", batches, plane, grid, dtype="float64", strategy=strategy)
    assert_untouched(model, before)
    moved = plane.to(dtype=torch.float64)
    weights = [moved.at(a, b) for a in grid.axes[0] for b in grid.axes[1]]
    slow = token_loop(model, batches, weights).reshape(3, 3)
    rel = np.abs(ds.loss.values - slow) / slow
    assert rel.max() < 1e-9, rel
    with torch.no_grad():
        mean_of_means = np.mean([float(model(**b).loss) for b in batches])
    assert abs(ds.loss.values[1, 1] - mean_of_means) > 1e-4  # the batches weigh differently
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    assert ds.attrs["n_target_tokens"] == tokens


def test_streamed_data_gives_the_same_bits_as_held_data():
    model, batches = tiny_gpt2(), padded_batches(n_batches=4)
    plane = cr.Plane.random(model, seed=1)
    grid = cr.Grid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 2))
    for strategy in ("loop", "vmap"):  # the same strategy and sizes: the same bits
        options = dict(dtype="float64", strategy=strategy, chunk_size=3, batch_size=5)
        held = cr.surface(model, "model", batches, plane, grid, **options)
        streamed = cr.surface(model, "model", batches, plane, grid, max_memory=2000, **options)
        assert streamed.attrs["data"] == "streamed" and "data" not in held.attrs
        assert streamed.loss.values.tobytes() == held.loss.values.tobytes()
        assert streamed.attrs["n_samples"] == held.attrs["n_samples"] == 16


def test_line_and_project_take_the_model_loss():
    model, batches = tiny_gpt2(), padded_batches()
    plane = cr.Plane.random(model, seed=0)
    ds = cr.line(model, "model", batches, plane, [0.0])
    assert ds.loss.values[0] == pytest.approx(
        float(token_loop(model, batches, [plane.at(0.0, 0.0)])[0]), rel=1e-5
    )
    rec = cr.Recorder(model)
    rec.record()
    path = cr.project(rec.trajectory, plane, model, "model", batches)
    assert path.loss.values[0] == pytest.approx(ds.loss.values[0], rel=1e-6)


def test_a_loss_the_model_returns_other_than_token_logits_is_taken_as_is():
    class Scored(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(3, 1)

        def forward(self, x, y):
            return {"loss": F.mse_loss(self.w(x), y)}

    torch.manual_seed(0)
    model, x, y = Scored(), torch.randn(10, 3), torch.randn(10, 1)
    data = [(x[:7], y[:7]), (x[7:], y[7:])]
    plane = cr.Plane.random(model, seed=0)
    ds = cr.line(model, "model", data, plane, [0.0, 0.5], dtype="float64")
    ref = cr.reference.line(model, "model", data, plane, [0.0, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(ds.loss.values, ref.loss.values, rtol=1e-12)
    with torch.no_grad():
        assert ds.loss.values[0] == pytest.approx(float(F.mse_loss(model.w(x), y)), rel=1e-6)


def test_labels_missing_or_all_ignored_are_refused_clearly():
    model, batches = tiny_gpt2(), padded_batches(n_batches=1)
    plane = cr.Plane.random(model, seed=0)
    unlabelled = [{k: v for k, v in batches[0].items() if k != "labels"}]
    with pytest.raises(cr.CrumpleError, match="needs the target tokens"):
        cr.line(model, "model", unlabelled, plane, [0.0])
    ignored = [{**batches[0], "labels": torch.full_like(batches[0]["labels"], -100)}]
    with pytest.raises(cr.CrumpleError, match="nothing for loss to average over"):
        cr.line(model, "model", ignored, plane, [0.0])


def test_the_command_takes_loss_model_and_dict_batches(tmp_path, capsys):
    from crumple.cli import main

    out = tmp_path / "run"
    argv = ["surface", "--model", "tests.cli_fixtures:tiny_gpt2", "--data"]
    argv += ["tests.cli_fixtures:token_batches", "--loss", "model", "--grid", "-1:1:3"]
    main([*argv, "--dtype", "float64", "--out", str(out)])
    ds = cr.open_run(out)["surface"]
    model, batches = tiny_gpt2(), padded_batches()
    plane = cr.Plane.load(out / "plane.safetensors").to(dtype=torch.float64)
    slow = token_loop(model, batches, [plane.at(0.0, 0.0)])[0]
    assert ds.loss.sel(alpha=0.0, beta=0.0).item() == pytest.approx(slow, rel=1e-9)
    assert "loss" in capsys.readouterr().out


def test_model_loss_on_a_model_that_takes_no_target_is_refused_clearly():
    net = torch.nn.Linear(3, 2)
    data = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(cr.CrumpleError, match="calls the model with the batch's target too"):
        cr.line(net, "model", data, cr.Plane.random(net), [0.0])


def test_a_dict_batch_without_labels_and_a_loss_function_is_refused_clearly():
    net = torch.nn.Linear(3, 2)
    data = [{"input": torch.randn(4, 3)}]
    with pytest.raises(cr.CrumpleError, match="no target to give it; a dict batch gives its"):
        cr.line(net, F.cross_entropy, data, cr.Plane.random(net), [0.0])
