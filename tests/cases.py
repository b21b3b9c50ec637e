"""Shared models, data and comparisons for the tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from crumple.examples import seed


def seed_data(n: int = 2_000, seed_: int = 0):
    """The article's data, split 80/20, as float32 (x, y) pairs."""
    return seed.split(*seed.make_data(n, seed_), seed=seed_)


def snapshot(model: nn.Module):
    """Everything crumple promises not to change: bits, flags and requires_grad."""
    return {
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "training": [m.training for m in model.modules()],
    }


def assert_untouched(model: nn.Module, before) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], "training flags changed"
    for name, (p, grad) in before["params"].items():
        q, grad_after = after["params"][name]
        assert grad_after == grad, f"requires_grad of {name} changed"
        assert torch.equal(
            p.view(torch.uint8) if p.dtype != torch.bool else p,
            q.view(torch.uint8) if q.dtype != torch.bool else q,
        ), f"{name} changed"
    for name, b in before["buffers"].items():
        assert torch.equal(b, after["buffers"][name]), f"buffer {name} changed"


def assert_close(fast, slow, rtol: float, label: str = "") -> None:
    """Compare arrays entry by entry; on failure list the entries that differ."""
    fast, slow = np.asarray(fast, dtype=np.float64), np.asarray(slow, dtype=np.float64)
    assert fast.shape == slow.shape, f"{label}: shapes {fast.shape} != {slow.shape}"
    bad = ~np.isclose(fast, slow, rtol=rtol, atol=0)
    if bad.any():
        idx = np.argwhere(bad)[:10]
        rows = "\n".join(
            f"  {tuple(i)}: fast {fast[tuple(i)]!r} slow {slow[tuple(i)]!r}" for i in idx
        )
        raise AssertionError(
            f"{label}: {bad.sum()} of {bad.size} entries differ (rtol {rtol}):\n{rows}"
        )


class Wide(nn.Module):
    """A small regression net with biases, BatchNorm and dropout, for the side-effect tests."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(1, 8)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.norm(self.inp(x)))))


def digits(n: int = 300, dtype=torch.float64):
    """scikit-learn's handwritten digits (shipped with the package): images (n, 1, 8, 8)
    scaled to [0, 1] and integer labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images[:n] / 16.0, dtype=dtype)[:, None]
    y = torch.tensor(bunch.target[:n], dtype=torch.long)
    return x, y


class MLP(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10)
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3),
            nn.ReLU(),
        )
        self.head = nn.Linear(6 * 6 * 6, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class AlwaysDropout(nn.Module):
    """A model whose noise ignores eval mode: its loss is not deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(64, 10)
        self.noisy = NoisyLayer()

    def forward(self, x):
        return self.noisy(self.body(x.flatten(1)))


class NoisyLayer(nn.Module):
    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=True)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: vmap cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if float(out.abs().max()) > 1e6:
            return out / 2
        return out


class ReadsFirstWeight(nn.Module):
    """An MLP whose output is scaled by the first layer's weight norm: always, or only where
    its output bias (zero at the start) is positive."""

    def __init__(self, always: bool) -> None:
        super().__init__()
        self.always = always
        self.first = nn.Linear(64, 16)
        self.out = nn.Linear(16, 10)
        with torch.no_grad():
            self.out.bias.zero_()

    def forward(self, x):
        logits = self.out(torch.relu(self.first(x.flatten(1))))
        if self.always or float(self.out.bias[0]) > 0:
            logits = logits * (1 + 0.1 * self.first.weight.norm())
        return logits


def trained(model: nn.Module, data, steps: int = 12, lr: float = 0.2, seed_: int = 0):
    """Train a copy of ``model`` briefly with SGD, recording every step; return both."""
    import copy

    import crumple as cr

    torch.manual_seed(seed_)
    model = copy.deepcopy(model)
    rec = cr.Recorder(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data
    for _ in range(steps):
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        rec.record()
    model.eval()
    return model, rec.trajectory


def accuracy(pred, y):
    return (pred.argmax(-1) == y).to(pred.dtype).mean()
