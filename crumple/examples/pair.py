"""Two models to connect: MLPs 64-256-256-10 (ReLU) trained from two seeds on the first 1,400
digits of scikit-learn (pixels / 16; SGD lr 0.05, momentum 0.9, batch 64, 40 epochs), the
experiment of ``make bench`` (``benchmarks/mode_connectivity.py``) and of the README's
``crumple connect`` page::

    python -m crumple.examples.pair out/pair      # writes a.pt and b.pt (seeds 1 and 2)
    crumple connect --model crumple.examples.pair:mlp --data crumple.examples.pair:digits \\
        --weights out/pair/a.pt --weights-b out/pair/b.pt --align weights --curve bezier \\
        --steps 1500 --out out/connect
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crumple.errors import require_extra

SAMPLES, EPOCHS, BATCH, LR, MOMENTUM = 1400, 40, 64, 0.05, 0.9


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 1,400 digits (pixels / 16, float32) and their labels.

    Example:
        >>> x, y = digits()
        >>> tuple(x.shape), int(y.max())
        ((1400, 64), 9)
    """
    datasets = require_extra("sklearn.datasets", "dev")
    images, labels = datasets.load_digits(return_X_y=True)
    return torch.tensor(images[:SAMPLES] / 16.0, dtype=torch.float32), torch.tensor(
        labels[:SAMPLES]
    )


def mlp() -> nn.Sequential:
    """The MLP 64-256-256-10 (ReLU), PyTorch's default init.

    Example:
        >>> sum(p.numel() for p in mlp().parameters())
        85002
    """
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def trained(seed: int, epochs: int = EPOCHS) -> nn.Sequential:
    """:func:`mlp` from ``seed`` trained on :func:`digits` (the batch order from ``seed``).

    Example:
        >>> x, y = digits()
        >>> float(F.cross_entropy(trained(1, epochs=1)(x).detach(), y)) < 2.0
        True
    """
    x, y = digits()
    torch.manual_seed(seed)
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        shuffled = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), BATCH):
            batch = shuffled[start : start + BATCH]
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return net


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, seed in (("a", 1), ("b", 2)):
        torch.save(trained(seed).state_dict(), out / f"{name}.pt")
    print(f"wrote {out / 'a.pt'} and {out / 'b.pt'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/pair")
