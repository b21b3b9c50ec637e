"""A small causal language model: a character-level GPT-2 of about a million parameters,
trained for a few minutes on the CPU on text built here (no download, no data file), with
its loss landscape on the PCA plane of its training path.

The corpus is the docstrings of a fixed list of Python standard-library modules, so it is
the same on every run of one Python version (and close across versions). The loss is the
one the model computes, ``model(**batch).loss``: the mean cross entropy over the target
tokens, the padding left out.

Example:
    >>> tok = Tokenizer()
    >>> tok.decode(tok.encode("Return a new list."))
    'Return a new list.'
"""

from __future__ import annotations

import functools
import importlib
import inspect
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from crumple.errors import CrumpleError, require_extra
from crumple.progress import tqdm

if TYPE_CHECKING:
    import transformers
    import xarray as xr

    from crumple.trajectory import Trajectory

# the modules whose docstrings (module, then public members by name) make the corpus
MODULES = (
    "json", "collections", "itertools", "functools", "textwrap", "string", "random",
    "statistics", "fractions", "decimal", "datetime", "pathlib", "heapq", "bisect", "shutil",
    "csv", "argparse", "logging", "re", "math", "enum", "dataclasses", "contextlib", "copy",
    "difflib", "calendar", "operator", "tempfile", "zipfile", "gzip", "base64", "struct",
    "inspect", "unittest", "doctest", "uuid",
)  # fmt: skip
MAX_CHARS = 200_000
PAD, UNKNOWN = "\x00", "\x01"  # the tokenizer's first two ids, never in the corpus


@functools.lru_cache(maxsize=1)
def corpus(max_chars: int = MAX_CHARS) -> str:
    """Text to train on: the docstrings of :data:`MODULES`, in that order, each module's
    own and then its public members' (by name), printable ASCII only, cut at
    ``max_chars``. Built here in about 0.1 s: nothing is downloaded or read from a data file.

    Example:
        >>> text = corpus()
        >>> len(text) == MAX_CHARS, text[:25]
        (True, 'JSON (JavaScript Object N')
    """
    parts = []
    for name in MODULES:
        module = importlib.import_module(name)
        members = [getattr(module, m) for m in sorted(vars(module)) if not m.startswith("_")]
        for obj in [module, *(m for m in members if getattr(m, "__module__", None) == name)]:
            doc = inspect.getdoc(obj)
            if doc and doc not in parts[-1:]:
                parts.append(doc)
    text = "\n\n".join(parts).replace("\t", "    ")
    text = "".join(c if " " <= c <= "~" or c == "\n" else "?" for c in text)
    if len(text) < 10_000:
        raise CrumpleError("no docstrings to build the corpus from: run Python without -OO")
    return text[:max_chars]


class Tokenizer:
    """Characters to ids and back, built from a text (by default :func:`corpus`).

    Id 0 is padding (``pad_id``), id 1 (``unknown_id``) any character the text did not hold,
    and the text's characters follow in code-point order; ``vocab_size`` counts them all.

    Example:
        >>> tok = Tokenizer("abca")
        >>> tok.vocab_size, tok.encode("cab!"), tok.decode([4, 2, 3, 0, 0])
        (5, [4, 2, 3, 1], 'cab')
    """

    def __init__(self, text: str | None = None) -> None:
        chars = set(corpus() if text is None else text) - {PAD, UNKNOWN}
        self.chars = [PAD, UNKNOWN, *sorted(chars)]
        self._ids = {c: k for k, c in enumerate(self.chars)}
        self.pad_id, self.unknown_id, self.vocab_size = 0, 1, len(self.chars)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, one per character.

        Example:
            >>> Tokenizer("ab").encode("ba")
            [3, 2]
        """
        return [self._ids.get(c, self.unknown_id) for c in text]

    def decode(self, ids) -> str:
        """The text of ``ids`` (a list or a tensor); padding is left out.

        Example:
            >>> Tokenizer("ab").decode(torch.tensor([2, 3, 0]))
            'ab'
        """
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        return "".join("" if i == self.pad_id else self.chars[i] for i in ids)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    return Tokenizer()


def _transformers():
    return require_extra("transformers", "hf")


def config(**overrides) -> transformers.GPT2Config:
    """The GPT-2 configuration: 4 layers, 4 heads, width 128, 128 positions, the corpus's
    characters as vocabulary, no dropout, eager attention; ``overrides`` replace any
    ``GPT2Config`` field.

    Eager attention, because ``torch.func.vmap`` has no batching rule for the CPU's
    scaled-dot-product attention and falls back to a loop over points, with a warning.

    Example:
        >>> config(n_layer=2).n_layer, config().n_embd
        (2, 128)
    """
    tok = _tokenizer()
    fields = dict(
        vocab_size=tok.vocab_size, n_positions=128, n_embd=128, n_layer=4, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # no dropout: a deterministic loss
        bos_token_id=None, eos_token_id=None, pad_token_id=tok.pad_id,
        use_cache=False,  # no key-value cache returned: vmap takes only tensors
        attn_implementation="eager",
    )  # fmt: skip
    return _transformers().GPT2Config(**(fields | overrides))


def model(seed: int = 0, **overrides) -> transformers.GPT2LMHeadModel:
    """A randomly initialised GPT-2 language model (``config(**overrides)``), in eval mode.
    The global random state is left as it was.

    Example:
        >>> net = model(n_layer=1, n_embd=32)
        >>> net.training, sum(p.numel() for p in net.parameters())
        (False, 20000)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _transformers().GPT2LMHeadModel(config(**overrides))
    net.loss_type = "ForCausalLM"  # transformers 5 finds none in the class name, and warns
    return net.eval()


def batches(
    text: str | None = None,
    *,
    n_sequences: int = 64,
    length: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> list[dict[str, Tensor]]:
    """Hugging Face style batches of random pieces of ``text`` (by default :func:`corpus`).

    Each sequence is ``length // 2`` to ``length`` characters long and padded on the right
    to ``length``; a batch is a dict of ``input_ids``, ``attention_mask`` (0 on padding) and
    ``labels`` (``input_ids`` with -100 on padding). The last batch may be smaller.

    Example:
        >>> b = batches("Hello, world! " * 10, n_sequences=3, length=8, batch_size=2)
        >>> len(b), sorted(b[0]), b[0]["input_ids"].shape
        (2, ['attention_mask', 'input_ids', 'labels'], torch.Size([2, 8]))
        >>> bool(((b[0]["labels"] == -100) == (b[0]["attention_mask"] == 0)).all())
        True
    """
    text = corpus() if text is None else text
    tokenizer = tokenizer or _tokenizer()
    if len(text) < length or length < 2:
        raise CrumpleError(f"length must be 2 to len(text) = {len(text)}; got {length}")
    rng = np.random.default_rng(seed)
    ids = torch.full((n_sequences, length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k in range(n_sequences):
        size = int(rng.integers(length // 2, length + 1))
        start = int(rng.integers(0, len(text) - size + 1))
        ids[k, :size] = torch.tensor(tokenizer.encode(text[start : start + size]))
        mask[k, :size] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return [
        {"input_ids": i, "attention_mask": m, "labels": y}
        for i, m, y in zip(*(t.split(batch_size) for t in (ids, mask, labels)))
    ]


def train(
    model: torch.nn.Module,
    batches: list[dict[str, Tensor]],
    *,
    steps: int = 300,
    lr: float = 3e-3,
    record_every: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> Trajectory:
    """Train ``model`` in place with AdamW on ``model(**batch).loss``, the batches in a
    seeded random order (each once before any twice), the learning rate warmed up over the
    first tenth of the steps, then decayed on a cosine to a tenth.

    The weights are recorded (:class:`crumple.Recorder`) before the first step, every
    ``record_every`` steps and after the last, each with the loss of the batch at those
    weights; ``steps`` must be a multiple of ``record_every``. The model is left in the
    mode (train or eval) it was in.

    Example:
        >>> net = model(n_layer=1, n_embd=32)
        >>> trajectory = train(net, batches(n_sequences=8, length=16), steps=4, record_every=2)
        >>> trajectory.steps, trajectory.losses[-1] < trajectory.losses[0]
        ([0, 2, 4], True)
    """
    from crumple.trajectory import Recorder

    if steps < 1 or record_every < 1 or steps % record_every or not batches:
        raise CrumpleError(
            f"train needs at least one batch (got {len(batches)}) and steps ({steps}) a positive "
            f"multiple of record_every ({record_every}), so that the last snapshot is the "
            "trained model"
        )
    warm = max(1, steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, 0.1 + 0.45 * (1 + np.cos(np.pi * s / steps)))
    )
    generator = torch.Generator().manual_seed(seed)
    recorder, order, was_training = None, [], model.training
    model.train()
    for step in tqdm(range(steps + 1), desc="training", disable=not progress):
        order = order or torch.randperm(len(batches), generator=generator).tolist()
        batch = batches[order.pop()]
        with torch.set_grad_enabled(step < steps):
            loss = model(**batch).loss
        if recorder is None:  # the weights before the first step, with their batch's loss
            recorder = Recorder(model, every=record_every, loss=loss)
        else:
            recorder.record(loss=loss)
        if step < steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.train(was_training)
    return recorder.trajectory


# the sizes of a run: the default (a few minutes on a 2-core CPU) and a quick one (seconds)
SIZES = {
    False: dict(model={}, length=64, held_out=32, batch_size=16, steps=300, grid_size=21),
    True: dict(model=dict(n_layer=1, n_embd=32, n_head=2), length=32, held_out=16,
               batch_size=16, steps=20, grid_size=7),
}  # fmt: skip
MAX_SEQUENCES = 16_384  # training pieces: one a step and batch row, up to this many
PATH = "AdamW"
LOSS = "model"  # model(**batch).loss, the exact mean over all target tokens


def run(
    out: str | Path,
    *,
    steps: int | None = None,
    grid_size: int | None = None,
    quick: bool = False,
    seed: int = 0,
    threads: int | None = 1,
    progress: bool = True,
) -> Path:
    """Train the model, compute its held-out loss on the PCA plane of the training path and
    on the line from the initial to the trained weights, and write the run folder
    (``landscape.zarr``, ``plane.safetensors``) and its page ``landscape.html``.

    Args:
        out: the run folder.
        steps: training steps (default 300, quick 20).
        grid_size: points per side of the grid over the path (default 21, quick 7).
        quick: a 1-layer, 32-wide model on shorter sequences: seconds instead of minutes.
        seed: the weights', the data's and the batch order's.
        threads: torch's threads while it runs (restored after); None leaves them as they
            are. One by default: this model's operations are small, and on the 2-core
            machine it was measured on, shared with other work, two threads spent their
            time waiting for each other (2.4 to 4 s a training step instead of 0.3 s).
        progress: progress bars for the training and the surface.

    Returns:
        The page's path.

    Example:
        >>> import tempfile
        >>> run(tempfile.mkdtemp(), quick=True, steps=4, grid_size=3, progress=False).name
        'landscape.html'
    """
    size = SIZES[bool(quick)]
    steps = size["steps"] if steps is None else steps
    grid_size = size["grid_size"] if grid_size is None else grid_size
    if grid_size < 2:
        raise CrumpleError(f"grid_size must be at least 2, got {grid_size}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _write(Path(out), *_compute(size, steps, grid_size, seed, progress))
    finally:
        torch.set_num_threads(before)


def _compute(size: dict, steps: int, grid_size: int, seed: int, progress: bool):
    """The training, the plane, the path, the surface and the line of :func:`run`."""
    from crumple.landscape import project
    from crumple.plane import Plane
    from crumple.surface import line, surface

    text = corpus()
    cut = len(text) * 9 // 10  # the last tenth is held out
    shape = dict(length=size["length"], batch_size=size["batch_size"], seed=seed)
    n_train = min(steps * size["batch_size"], MAX_SEQUENCES)
    train_data = batches(text[:cut], n_sequences=n_train, **shape)
    held_out = batches(text[cut:], n_sequences=size["held_out"], **shape)
    net = model(seed, **size["model"])
    start = time.perf_counter()
    every = next(d for d in range(max(1, steps // 30), 0, -1) if steps % d == 0)
    trajectory = train(
        net, train_data, steps=steps, record_every=every, seed=seed, progress=progress
    )
    seconds = time.perf_counter() - start
    plane = Plane.pca(trajectory)
    path = project(trajectory, plane, net, LOSS, held_out)
    ds = surface(net, LOSS, held_out, plane, _grid(path, grid_size), progress=progress)
    ends = Plane.between(trajectory.snapshot(0), trajectory.snapshot(len(trajectory) - 1))
    alpha = np.linspace(-0.25, 1.25, 6 * max(2, grid_size // 3) + 1)  # 0 and 1 among them
    ends_ds = line(net, LOSS, held_out, ends, alpha, progress=progress)
    c = net.config
    ds.attrs["n_parameters"] = sum(p.numel() for p in net.parameters())
    facts = {
        "model": f"GPT-2, n_layer {c.n_layer}, n_head {c.n_head}, n_embd {c.n_embd}, "
        f"{c.vocab_size} characters",
        "training": f"{steps} AdamW steps of {size['batch_size']} of {n_train:,} pieces of "
        f"the first nine tenths, {seconds:.3g} s",
        "held out": f"{size['held_out']} sequences of the corpus's last tenth, "
        f"{ds.attrs['n_target_tokens']:,} target tokens",
    }
    return ds, path, plane, ends_ds, facts


def _grid(path: xr.Dataset, n: int):
    """A grid over the path's extent on the plane and a quarter of it beyond each side."""
    from crumple.grid import Grid

    axes = []
    for dim in ("alpha", "beta"):
        low, high = float(path[dim].min()), float(path[dim].max())
        margin = 0.25 * (high - low) or 1.0
        axes.append(np.linspace(low - margin, high + margin, n))
    return Grid(*axes)


def _write(folder: Path, ds, path, plane, ends_ds, facts) -> Path:
    """The run folder and its page; the colours reach at least the path's highest loss (the
    initial weights'), so that the whole path is on the colour scale."""
    import plotly.graph_objects as go

    from crumple import plot
    from crumple.plot.scale import Scale
    from crumple.run.lock import writer
    from crumple.run.store import DATA, save_run

    for result in (ds, ends_ds):
        result.loss.attrs["long_name"] = "held-out loss per token"
    ends_ds.alpha.attrs["long_name"] = "weights: initial (0) to trained (1)"
    figure = plot.line(
        {"held-out loss": ends_ds},
        title="From the initial (0) to the trained (1) weights",
    )
    ends = [float(path.loss[0]), float(path.loss[-1])]
    figure.add_trace(go.Scatter(x=[0, 1], y=ends, mode="markers", name="the recorded weights"))
    with writer(folder):  # the folder's one writer, from the data to the page
        save_run(folder, ds, {PATH: path}, plane)
        lines = "lines/initial_to_trained"
        ends_ds.to_zarr(folder / DATA, group=lines, mode="w", consolidated=False)
        return plot.report(
            folder / "landscape.html",
            ds,
            {PATH: path},
            title="crumple: a small language model's loss landscape",
            more_facts=facts,
            more_figures=[figure],
            zmax=max(Scale(ds.loss.values).cap, float(path.loss.max())),
        )
