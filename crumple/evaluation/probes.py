"""What the evaluator learns from the model before a run, each in its own small pass.

* ``check_deterministic``: a named check, run once (the only one that can refuse a model).
* ``activations_per_sample``: the sizing probe.
* ``depends_on_batch``: whether a sample's output depends on the rest of its batch.
* ``expanded_layers`` and ``vmap_obstacle``: what the ``auto`` choice looks at first.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_leaves

from crumple.batches import Batch
from crumple.errors import CrumpleError
from crumple.evaluation.kernels import Kernels
from crumple.losses import Objective
from crumple.params import Params
from crumple.plane import Plane

PROBE_SAMPLES = 8
# modules whose operations torch.func.vmap runs point by point, or slower than a loop
VMAP_OBSTACLES: dict[type[nn.Module], str] = {
    nn.RNNBase: "recurrent layers have no vmap batching rule (vmap would loop point by point)",
    nn.MultiheadAttention: "attention's fused kernels have no vmap batching rule",
}
# and on the CPU, where vmap's grouped convolutions are slower than one per point
CPU_VMAP_OBSTACLES: dict[type[nn.Module], str] = {
    nn.modules.conv._ConvNd: "vmap makes convolutions grouped ones, slower than a loop on the CPU",
}


def check_deterministic(
    model: nn.Module, params: Params, buffers: Params, objective: Objective, batch: Batch
) -> None:
    """Run the model twice on the first samples of ``batch``; refuse a model whose output
    changes, naming the first module that differs."""
    batch = batch.rows(slice(0, PROBE_SAMPLES))
    where = f"the model on the first {batch.size} samples of the data"
    passes = [_module_outputs(model, params, buffers, objective, batch, where) for _ in range(2)]
    for (name, first), (_, second) in zip(*passes):
        if not _same(first, second):
            raise CrumpleError(
                f"the model's output changes between two passes on the same data, first at "
                f"module {name!r}; a landscape needs a deterministic loss. Random layers "
                "(dropout, noise) must be off in eval mode: check that this module honours "
                "self.training"
            )


def _same(first: Tensor, second: Tensor) -> bool:
    """Equal, nan in the same places counting as equal (nan is no sign of randomness)."""
    if first.shape != second.shape or first.dtype != second.dtype:
        return False
    if first.is_floating_point() or first.is_complex():
        return bool(torch.allclose(first, second, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(first, second)


def activations_per_sample(
    model: nn.Module, params: Params, buffers: Params, objective: Objective, batch: Batch
) -> int:
    """Activation elements per sample: the sum over all module outputs."""
    outputs = _module_outputs(model, params, buffers, objective, batch)
    return max(1, sum(t.numel() for _, t in outputs) // batch.size)


def depends_on_batch(
    model: nn.Module, params: Params, buffers: Params, objective: Objective, batch: Batch
) -> bool:
    """Whether the outputs for the first samples change when the batch holds more of them
    (BatchNorm without running statistics, say), or cannot be told apart per sample."""
    n = min(batch.size, 2 * PROBE_SAMPLES)
    if n < 2:
        return True  # cannot tell: keep the user's batches
    predict = functional(model, params, buffers)
    half = tree_leaves(objective.call(predict, batch.rows(slice(0, n // 2))))
    whole = tree_leaves(objective.call(predict, batch.rows(slice(0, n))))
    rows = [(a, b) for a, b in zip(half, whole) if isinstance(b, Tensor) and b.dim() > 0]
    if len(half) != len(whole) or not rows:
        return True
    for part, full in rows:
        if full.shape[0] != n:
            return True  # a value over the whole batch (a loss): cannot tell per sample
        full = full[: n // 2]
        if part.shape != full.shape:
            return True
        if part.is_floating_point():
            tolerance = 1e-10 if part.dtype == torch.float64 else 1e-4
            scale = max(float(full.abs().max()), 1.0)
            if (part - full).abs().max() > tolerance * scale:
                return True
        elif not torch.equal(part, full):
            return True
    return False


def expanded_layers(
    model: nn.Module, plane: Plane, kernels: Kernels, buffers: Params, objective, batch: Batch
) -> set[str]:
    """The parameters of input layers that ``kernels`` would expand (fills its cache for
    the first batch on the way)."""
    point = [0.0] * plane.ndim
    params = plane.at(*point)
    with kernels:
        kernels.start(0, batch.first, params, point, on_plane=True)
        try:
            objective.call(functional(model, params, buffers), batch)
        finally:
            kernels.stop()
    return set(kernels.expanded)


def vmap_obstacle(
    model: nn.Module, params: Params, buffers: Params, objective: Objective, batch: Batch
) -> str | None:
    """Why vmap cannot batch this model well, or ``None``: a known module, or a trial over
    two points that fails or makes PyTorch warn of a per-point fallback (kept quiet)."""
    cpu = batch.first.device.type == "cpu"
    obstacles = VMAP_OBSTACLES | (CPU_VMAP_OBSTACLES if cpu else {})
    for module in model.modules():
        for kind, reason in obstacles.items():
            if isinstance(module, kind):
                return f"{type(module).__name__}: {reason}"
    stacked = {n: torch.stack([p, p]) for n, p in params.items()}

    probe = batch.rows(slice(0, PROBE_SAMPLES))

    def predict(p: Params) -> Tensor:
        return objective.call(functional(model, p, buffers), probe)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            vmap(predict)(stacked)
        except Exception as e:  # vmap cannot trace this model
            return f"vmap cannot trace it ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    for warning in caught:
        if "performance drop" in str(warning.message):
            return f"PyTorch would run part of it point by point ({str(warning.message)[:160]})"
    return None


def _module_outputs(model, params, buffers, objective, batch, where="model") -> list:
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    outputs: list[tuple[str, Tensor]] = []

    def hook(module, inputs, output):
        if isinstance(output, Tensor):
            outputs.append((names[module], output.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        objective.call(functional(model, params, buffers), batch, where)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def functional(model: nn.Module, params: Params, buffers: Params):
    """The model as a function of its inputs, with ``params`` and ``buffers``."""

    def predict(*args, **kwargs):
        return functional_call(model, (params, buffers), args, kwargs)

    return predict
