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
