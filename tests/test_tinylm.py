"""The small language model example: its corpus, tokenizer, batches, training, its run
folder and page, and ``crumple demo --lm``."""

import hashlib
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from crumple.cli import main  # noqa: E402
from crumple.examples import tinylm  # noqa: E402
from crumple.run.store import open_run  # noqa: E402

TINY = dict(n_layer=1, n_embd=32, n_head=2)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.slow
def test_corpus_is_built_here_and_the_same_each_time(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the corpus must not use the network")

    tinylm.corpus.cache_clear()
    monkeypatch.setattr(socket, "socket", no_network)
    text = tinylm.corpus()
    assert 100_000 <= len(text) <= tinylm.MAX_CHARS
    assert set(text) <= {chr(c) for c in range(32, 127)} | {"\n"}
    # another process, another hash seed, another import order: the same text
    fresh = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hashlib, uuid, json; from crumple.examples.tinylm import corpus; "
            "print(hashlib.sha256(corpus().encode()).hexdigest())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert fresh.stdout.strip() == digest(text)


def test_tokenizer_round_trip_and_unknown_characters():
    tok = tinylm.Tokenizer()
    text = tinylm.corpus()[:500]
    assert tok.decode(tok.encode(text)) == text
    assert tok.pad_id == 0 and tok.vocab_size == len(set(tinylm.corpus())) + 2
    assert tok.encode("é") == [tok.unknown_id]


def test_batches_are_padded_on_the_right_with_masked_labels():
    data = tinylm.batches(n_sequences=10, length=24, batch_size=4, seed=3)
    assert [len(b["input_ids"]) for b in data] == [4, 4, 2]
    lengths = []
    for b in data:
        ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
        assert ids.shape == mask.shape == labels.shape and ids.shape[1] == 24
        assert ids.dtype == mask.dtype == labels.dtype == torch.long
        assert torch.equal(labels, ids.masked_fill(mask == 0, -100))
        assert torch.equal(ids[mask == 0], torch.zeros_like(ids[mask == 0]))
        # padding only on the right: the mask never rises again after it falls
        assert bool((mask[:, 1:] <= mask[:, :-1]).all())
        lengths += mask.sum(dim=1).tolist()
    assert min(lengths) >= 12 and len(set(lengths)) > 1  # varying lengths, at least half
    again = tinylm.batches(n_sequences=10, length=24, batch_size=4, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(data, again))


def test_model_is_seeded_and_in_eval_mode():
    state = torch.random.get_rng_state()
    a, b, c = tinylm.model(0, **TINY), tinylm.model(0, **TINY), tinylm.model(1, **TINY)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global state is left alone
    assert not a.training and a.config._attn_implementation == "eager"
    weights = [m.transformer.h[0].attn.c_attn.weight for m in (a, b, c)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    assert 1_000_000 > sum(p.numel() for p in tinylm.model().parameters()) > 500_000


def test_short_training_lowers_the_loss_and_records_the_path():
    net = tinylm.model(0, **TINY)
    data = tinylm.batches(n_sequences=32, length=32, batch_size=8)
    trajectory = tinylm.train(net, data, steps=12, lr=1e-2, record_every=3)
    assert trajectory.steps == [0, 3, 6, 9, 12]
    assert trajectory.losses[-1] < trajectory.losses[0] - 0.5
    assert not net.training  # left in the mode it was in
    final = {n: p.detach() for n, p in net.named_parameters()}
    assert all(torch.equal(final[n], w) for n, w in trajectory.snapshot(4).items())
    with pytest.raises(ValueError, match="multiple of record_every"):
        tinylm.train(net, data, steps=10, record_every=3)


def check_run(folder, page):
    assert page == folder / "landscape.html" and page.is_file()
    html = page.read_text()
    assert html.count('id="figure-') == 4  # 3-D, contour, loss curves, the line
    run = open_run(folder)
    surface, path = run["surface"], run[tinylm.PATH]
    assert surface.attrs["plane_kind"] == "pca"
    for dim in ("alpha", "beta"):  # the whole path lies on the grid
        assert surface[dim].min() < path[dim].min() and path[dim].max() < surface[dim].max()
    assert float(path.loss[-1]) < float(path.loss[0])
    return surface, path


def test_quick_run_writes_the_run_and_its_page(tmp_path):
    threads = torch.get_num_threads()
    page = tinylm.run(tmp_path / "lm", quick=True, steps=10, grid_size=5, progress=False)
    assert torch.get_num_threads() == threads  # restored
    surface, path = check_run(tmp_path / "lm", page)
    assert surface.loss.shape == (5, 5) and path.sizes["step"] == 11
    assert surface.attrs["n_target_tokens"] > 16 * 15  # the model's own token-mean loss
    assert "held out" in page.read_text() and "GPT-2, n_layer 1," in page.read_text()
    assert surface.attrs["n_parameters"] == sum(
        p.numel() for p in tinylm.model(**tinylm.SIZES[True]["model"]).parameters()
    )


def test_demo_lm_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "lm"
    main(["demo", "--lm", "--quick", "--steps", "6", "--grid-size", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"wrote {out / 'landscape.html'}" in printed and "held-out loss" in printed
    surface, _ = check_run(out, out / "landscape.html")
    assert surface.loss.shape == (4, 4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lm", "--epochs", "3"], "--epochs is for the article's network, not --lm"),
        (["--lm", "--step", "0.1", "--lr", "1"], "--step, --lr are for the article's"),
        (["--steps", "10"], "--steps is for the language model: add --lm"),
        (["--quick"], "--quick is for the language model"),
        (["--lm", "--steps", "1"], "--steps must be at least 2"),
        (["--lm", "--grid-size", "5000"], "--grid-size must be at most 2000"),
    ],
)
def test_demo_lm_refuses_options_that_do_not_apply(tmp_path, capsys, args, message):
    out = tmp_path / "lm"
    with pytest.raises(SystemExit) as stop:
        main(["demo", *args, "--out", str(out)])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_demo_lm_without_transformers_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    with pytest.raises(ImportError, match=r"pip install 'crumple\[hf\]'"):
        main(["demo", "--lm", "--quick", "--out", str(tmp_path / "lm")])
    assert not (tmp_path / "lm").exists()


@pytest.mark.slow
def test_default_model_end_to_end(tmp_path):
    """The default model and data, shortened: 30 steps, 5 x 5 points (the whole default
    run, 300 steps and 21 x 21 points, takes minutes: README.md gives the figures)."""
    page = tinylm.run(tmp_path / "lm", steps=30, grid_size=5, progress=False)
    surface, path = check_run(tmp_path / "lm", page)
    assert surface.attrs["n_parameters"] == 822_272 and surface.loss.shape == (5, 5)
    assert float(path.loss[-1]) < float(path.loss[0]) - 0.5
