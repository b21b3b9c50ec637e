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


def parameters_from(state: Mapping[str, Tensor], model: nn.Module, label: str = "state") -> Params:
    """Copies of ``model``'s parameters as a ``state_dict()`` of its architecture holds them.

    A state dict also holds buffers (BatchNorm statistics), which are left out, and each tied
    parameter under every name it has, which must agree; a ``{name: tensor}`` dict of the
    parameters alone works too. ``label`` names ``state`` in errors.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> sorted(parameters_from(net.state_dict(), net))
        ['0.bias', '0.weight', '1.bias', '1.weight']
    """
    params = dict(model.named_parameters())  # a tied tensor once, under its first name
    names = {n: [] for n in params}  # each parameter's names, its first one first
    first = {id(p): n for n, p in params.items()}
    for n, p in model.named_parameters(remove_duplicate=False):
        names[first[id(p)]].append(n)
    known = {a for aliases in names.values() for a in aliases}
    known |= {n for n, _ in model.named_buffers(remove_duplicate=False)}
    found = {n: [state[a] for a in names[n] if a in state] for n in params}
    problems = {
        "missing": [n for n in params if not found[n]],
        "unknown": [k for k in state if k not in known],
        "of another shape": [
            n for n in params if any(t.shape != params[n].shape for t in found[n])
        ],
        "tied in the model but different here": [
            n for n in params if any(not t.equal(found[n][0]) for t in found[n][1:])
        ],
    }
    wrong = "; ".join(f"{what} {listed}" for what, listed in problems.items() if listed)
    if wrong:
        raise CrumpleError(
            f"{label} does not fit the model: {wrong}; give the state_dict() of a model of the "
            "same architecture, which ties the same weights"
        )
    return {n: found[n][0].detach().clone() for n in params}


def differences(ours: Params, theirs: Params, our_name: str, their_name: str) -> str | None:
    """``None`` if two sets of parameters have the same names and shapes, else what differs
    (at most 8 names of each kind).

    Example:
        >>> differences({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, "the model", "the path")
        "parameters only in the model [], only in the path [], of other shapes ['w']"
    """
    resized = [n for n in ours if n in theirs and ours[n].shape != theirs[n].shape]
    if ours.keys() == theirs.keys() and not resized:
        return None
    return (
        f"parameters only in {our_name} {sorted(ours.keys() - theirs.keys())[:8]}, only in "
        f"{their_name} {sorted(theirs.keys() - ours.keys())[:8]}, of other shapes {resized[:8]}"
    )


def buffers_of(model: nn.Module) -> Params:
    """The model's buffers by name (running statistics and the like), not copied."""
    return dict(model.named_buffers())


def recorded_buffers(model: nn.Module) -> Params:
    """Copies (on the CPU, of their own dtypes) of the buffers the model's ``state_dict``
    holds: BatchNorm running statistics and their counts; not the buffers a model makes
    again itself (non-persistent ones, such as attention masks).

    Example:
        >>> sorted(recorded_buffers(torch.nn.BatchNorm1d(2)))
        ['num_batches_tracked', 'running_mean', 'running_var']
    """
    skip = {
        f"{prefix}.{name}".lstrip(".")
        for prefix, module in model.named_modules()
        for name in module._non_persistent_buffers_set
    }
    return {n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers() if n not in skip}


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
