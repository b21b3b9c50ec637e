"""Named parameter sets: copies, entries addressed as ``"name[index]"``, flattening, and
the guard that leaves a user's model exactly as it was."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError

Params = dict[str, Tensor]

_ENTRY = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<index>[\d,\s]*)\])?$")


def parameters_of(model: nn.Module) -> Params:
    """Detached copies of a model's parameters, by name.

    Example:
        >>> sorted(parameters_of(torch.nn.Linear(2, 1)))
        ['bias', 'weight']
    """
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def buffers_of(model: nn.Module) -> Params:
    """The model's buffers by name (running statistics and the like), not copied."""
    return dict(model.named_buffers())


def parse_entry(spec: str, params: Mapping[str, Tensor]) -> tuple[str, tuple[int, ...]]:
    """Resolve ``"name"`` or ``"name[i, j]"`` to a parameter name and a full index.

    A bare name is allowed only for a parameter with a single entry.

    Example:
        >>> parse_entry("weight[0, 1]", {"weight": torch.zeros(2, 3)})
        ('weight', (0, 1))
    """
    match = _ENTRY.match(spec.strip()) if isinstance(spec, str) else None
    if match is None:
        raise CrumpleError(
            f"parameter entry {spec!r} is not understood; write 'name' or 'name[i, j]', "
            f"e.g. 'Layer_1.weight[0, 0]'"
        )
    name = match["name"].strip()
    if name not in params:
        raise CrumpleError(
            f"the model has no parameter {name!r}; it has: {', '.join(params) or 'none'}"
        )
    shape = tuple(params[name].shape)
    if match["index"] is None:
        if params[name].numel() != 1:
            raise CrumpleError(
                f"parameter {name!r} has shape {shape}, so one entry must be chosen: "
                f"write e.g. '{name}[{', '.join('0' * len(shape))}]'"
            )
        return name, (0,) * len(shape)
    index = tuple(int(i) for i in match["index"].split(",") if i.strip())
    if len(index) != len(shape) or any(not 0 <= i < n for i, n in zip(index, shape)):
        raise CrumpleError(
            f"index {list(index)} does not address one entry of {name!r}, whose shape is {shape}"
        )
    return name, index


def cast(t: Tensor, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """Move ``t`` to ``device``; cast it to ``dtype`` only if it holds floating-point values."""
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)


def flatten(params: Mapping[str, Tensor], names: list[str]) -> Tensor:
    """Concatenate the named tensors into one vector, in the order of ``names``."""
    return torch.cat([params[n].reshape(-1) for n in names])


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, without gradients, and restore each ``training`` flag
    afterwards, also when the body raises."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags:
            module.training = flag
