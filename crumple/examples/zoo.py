"""Small builders of the model types researchers draw landscapes of, each with its data.

Every builder returns a :class:`Case` ``(model, loss_fn, data)`` ready for
``cr.surface(*case, plane, grid)``: the model in eval mode, a loss that returns the batch
mean, and a ``DataLoader`` (``shuffle=False``). Everything is made here and seeded: the
digits come from scikit-learn's shipped ``load_digits`` (1,797 images of 8 x 8), the
tokens from a seeded ``torch.Generator``; nothing is downloaded. Size and dtype are
keyword arguments, so tests build tiny float64 versions and the benchmarks
(``benchmarks/models.py``, ``benchmarks/general.py``) moderate float32 ones.

Example:
    >>> import crumple as cr
    >>> import numpy as np
    >>> case = mlp(features=6, width=4, n=16, dtype=torch.float64)
    >>> plane = cr.Plane.random(case.model, seed=0)
    >>> ds = cr.surface(*case, plane, cr.Grid(np.linspace(-1, 1, 2), np.linspace(-1, 1, 2)))
    >>> ds.loss.shape
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class Case(NamedTuple):
    """A model, its loss and its data: ``cr.surface(*case, plane, grid)``."""

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    data: DataLoader


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is in the dev extra
        raise ImportError("the digits need scikit-learn: pip install 'crumple[dev]'") from e
    bunch = load_digits()
    return bunch.images, bunch.target


def digits(n: int | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The first ``n`` of scikit-learn's shipped 8 x 8 digits, as ``(n, 1, 8, 8)`` in [0, 1].

    Args:
        n: how many images (all 1,797 when None).
        dtype: the dtype of the images; the labels are ``torch.long``.

    Example:
        >>> x, y = digits(5)
        >>> x.shape, y.tolist(), float(x.max())
        (torch.Size([5, 1, 8, 8]), [0, 1, 2, 3, 4], 1.0)
    """
    images, target = _load_digits()
    x = torch.as_tensor(images[:n] / 16.0, dtype=dtype).unsqueeze(1)
    return x, torch.as_tensor(target[:n], dtype=torch.long)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Initialise with ``torch.manual_seed(seed)``, leaving the caller's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _gaussian(n: int, shape: tuple[int, ...], dtype: torch.dtype, seed: int):
    """Gaussian inputs of ``shape`` and random labels of 10 classes, drawn as
    ``benchmarks/general.py`` always drew them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).to(dtype)
    return x, torch.randint(0, 10, (n,), generator=g)


def _case(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, loss_fn=F.cross_entropy):
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    return Case(model.eval(), loss_fn, loader)


class BasicBlock(nn.Module):
    """A basic residual block: two 3x3 convolutions with BatchNorm, added to the shortcut,
    then ReLU. Where the stride or the channel count changes, the shortcut is ``shortcut``
    if given, else a 1x1 convolution with BatchNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = shortcut or nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def resnet(
    *,
    widths: tuple[int, ...] = (8, 16),
    n: int = 256,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """A small ResNet on the digits: conv stem, residual blocks, global pooling, linear head.

    One block keeps ``widths[0]`` channels (identity shortcut); each further width adds a
    block of stride 2 with a 1x1-convolution shortcut. The BatchNorm running statistics are
    those of a few training-mode passes over the data (no weight updates), so eval mode
    normalizes with non-trivial means and variances.

    Args:
        widths: channels of the stem and of each block after the first.
        n: number of digit images.
        batch_size: images per batch of the loader.
        dtype: dtype of the parameters, buffers and images.
        seed: seed of the initialisation.

    Example:
        >>> case = resnet(widths=(4, 8), n=8, dtype=torch.float64)
        >>> x, y = next(iter(case.data))
        >>> case.model(x).shape, case.model.training
        (torch.Size([8, 10]), False)
    """
    with _seeded(seed):
        blocks = [BasicBlock(widths[0], widths[0])]
        blocks += [BasicBlock(a, b, stride=2) for a, b in zip(widths, widths[1:])]
        model = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            *blocks,
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(widths[-1], 10),
        ).to(dtype)
    x, y = digits(n, dtype)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            for xb in x.split(batch_size):
                model(xb)
    return _case(model, x, y, batch_size)


class _RowTransformer(nn.Module):
    """Digit rows as 8 tokens of 8 features -> TransformerEncoder -> mean pool -> head."""

    def __init__(self, d_model: int, nhead: int, layers: int, dim_feedforward: int):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.position = nn.Parameter(0.1 * torch.randn(1, 8, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.1, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.embed(x.reshape(-1, 8, 8)) + self.position)
        return self.head(h.mean(dim=1))


def transformer(
    *,
    d_model: int = 16,
    nhead: int = 2,
    layers: int = 2,
    dim_feedforward: int = 32,
    n: int = 256,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """A transformer classifier of the digits: each image is a sequence of its 8 rows.

    The rows (8 features each) are projected to ``d_model``, get a learned position
    embedding, pass a ``layers``-deep ``nn.TransformerEncoder`` (``batch_first=True``,
    dropout 0.1, off in eval mode), are mean-pooled and classified by a linear head.

    Example:
        >>> case = transformer(d_model=8, dim_feedforward=8, n=4, dtype=torch.float64)
        >>> x, y = next(iter(case.data))
        >>> case.model(x).shape
        torch.Size([4, 10])
    """
    with _seeded(seed):
        model = _RowTransformer(d_model, nhead, layers, dim_feedforward).to(dtype)
    return _case(model, *digits(n, dtype), batch_size)


class _RowLSTM(nn.Module):
    """Digit rows as a sequence of 8 vectors of 8 -> LSTM -> last output -> head."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x.reshape(-1, 8, 8))
        return self.head(out[:, -1])


def lstm(
    *,
    hidden: int = 32,
    layers: int = 2,
    n: int = 256,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """An ``nn.LSTM`` classifier (``layers`` deep) reading each digit row by row.

    Example:
        >>> case = lstm(hidden=4, n=4, dtype=torch.float64)
        >>> x, y = next(iter(case.data))
        >>> case.model(x).shape
        torch.Size([4, 10])
    """
    with _seeded(seed):
        model = _RowLSTM(hidden, layers).to(dtype)
    return _case(model, *digits(n, dtype), batch_size)


class _TiedLM(nn.Module):
    """Embedding -> GRU -> LayerNorm -> a linear head whose weight is the embedding's
    (one Parameter under two names, as Hugging Face ties ``lm_head`` to the embedding)."""

    def __init__(self, vocab: int, d_model: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.gru = nn.GRU(d_model, d_model, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        h, _ = self.gru(self.embed(tokens))
        return self.head(self.norm(h))


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross entropy over every token of the batch.

    Example:
        >>> round(float(lm_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))), 4)
        1.3863
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def tied_lm(
    *,
    vocab: int = 64,
    d_model: int = 32,
    seq_len: int = 16,
    n: int = 128,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """A tiny language model whose output projection is its input embedding (one Parameter).

    The GRU reads left to right, so each position sees only earlier tokens. The data are
    ``n`` windows of a seeded random token stream: inputs ``(n, seq_len)`` and the next
    tokens as targets. Every sequence has the same length, so the batch mean over tokens
    that :func:`lm_loss` returns, weighed by sequences, is the exact mean over tokens.
    The model is as initialised (untrained).

    Example:
        >>> case = tied_lm(vocab=8, d_model=4, seq_len=5, n=3, dtype=torch.float64)
        >>> tokens, targets = next(iter(case.data))
        >>> case.model(tokens).shape, targets.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 5]))
    """
    with _seeded(seed):
        model = _TiedLM(vocab, d_model).to(dtype)
    g = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, vocab, (n * seq_len + 1,), generator=g)
    tokens = stream[:-1].reshape(n, seq_len)
    targets = stream[1:].reshape(n, seq_len)
    return _case(model, tokens, targets, batch_size, loss_fn=lm_loss)


def mlp(
    *,
    features: int = 784,
    width: int = 256,
    n: int = 2048,
    batch_size: int = 512,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """The MLP ``features-width-width-10`` with ReLU on Gaussian inputs and random labels.

    The defaults are ``benchmarks/general.py``'s MLP 784-256-256-10 on 2,048 inputs.

    Example:
        >>> case = mlp(features=6, width=4, n=8, dtype=torch.float64)
        >>> x, y = next(iter(case.data))
        >>> case.model(x).shape
        torch.Size([8, 10])
    """
    with _seeded(seed):
        model = nn.Sequential(
            nn.Linear(features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        ).to(dtype)
    return _case(model, *_gaussian(n, (features,), dtype, seed), batch_size)


def cnn(
    *,
    channels: tuple[int, int] = (16, 32),
    size: int = 32,
    n: int = 512,
    batch_size: int = 128,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """Two 3x3 convolutions ``3 -> channels`` with ReLU, then a linear head, on
    ``3 x size x size`` Gaussian inputs with random labels.

    The defaults are ``benchmarks/general.py``'s CNN 3->16->32 on 512 inputs of 3x32x32.

    Example:
        >>> case = cnn(channels=(2, 3), size=4, n=8, dtype=torch.float64)
        >>> x, y = next(iter(case.data))
        >>> case.model(x).shape
        torch.Size([8, 10])
    """
    c1, c2 = channels
    with _seeded(seed):
        model = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * size * size, 10),
        ).to(dtype)
    return _case(model, *_gaussian(n, (3, size, size), dtype, seed), batch_size)


def batch_dependent(
    *,
    width: int = 32,
    n: int = 256,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """An MLP on the flattened digits whose output for one image depends on its batch.

    ``nn.BatchNorm1d(width, track_running_stats=False)`` normalizes with the batch's own
    statistics even in eval mode, so the loss depends on how the data is batched and a
    surface of it is only defined on the loader's own batches.

    Example:
        >>> case = batch_dependent(width=4, n=8, batch_size=4, dtype=torch.float64)
        >>> x, y = next(iter(case.data))
        >>> torch.allclose(case.model(x)[:2], case.model(x[:2]))
        False
    """
    with _seeded(seed):
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, width),
            nn.BatchNorm1d(width, track_running_stats=False),
            nn.ReLU(),
            nn.Linear(width, 10),
        ).to(dtype)
    return _case(model, *digits(n, dtype), batch_size)
