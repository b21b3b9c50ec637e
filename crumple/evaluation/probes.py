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

from crumple.errors import CrumpleError, user_code
from crumple.evaluation.kernels import Kernels
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


def check_deterministic(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> None:
    """Run the model twice on the same samples; refuse a model whose output changes,
    naming the first module that differs."""
    with user_code(f"model(x) on the first {len(x)} samples of the data, shape {tuple(x.shape)}"):
        passes = [_module_outputs(model, params, buffers, x) for _ in range(2)]
    for (name, first), (_, second) in zip(*passes):
        if first.shape != second.shape or not torch.equal(first, second):
            raise CrumpleError(
                f"the model's output changes between two passes on the same data, first at "
                f"module {name!r}; a landscape needs a deterministic loss. Random layers "
                "(dropout, noise) must be off in eval mode: check that this module honours "
                "self.training"
            )


def activations_per_sample(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> int:
    """Activation elements per sample: the sum over all module outputs."""
    outputs = _module_outputs(model, params, buffers, x)
    return max(1, sum(t.numel() for _, t in outputs) // len(x))


def depends_on_batch(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> bool:
    """Whether the outputs for the first samples change when the batch holds more of them
    (BatchNorm without running statistics, say), or cannot be told apart per sample."""
    n = min(len(x), 2 * PROBE_SAMPLES)
    if n < 2:
        return True  # cannot tell: keep the user's batches

    def predict(part: Tensor):
        return functional_call(model, (params, buffers), (part,))

    half, whole = predict(x[: n // 2]), predict(x[:n])
    if not isinstance(whole, Tensor) or whole.dim() == 0 or whole.shape[0] != n:
        return True
    whole = whole[: n // 2]
    if half.shape != whole.shape:
        return True
    tolerance = 1e-10 if half.dtype == torch.float64 else 1e-4
    scale = max(float(whole.abs().max()), 1.0)
    return bool((half - whole).abs().max() > tolerance * scale)


def expanded_layers(
    model: nn.Module, plane: Plane, kernels: Kernels, buffers: Params, x: Tensor
) -> set[str]:
    """The parameters of input layers that ``kernels`` would expand (fills its cache for
    the first batch on the way)."""
    point = [0.0] * plane.ndim
    params = plane.at(*point)
    with kernels:
        kernels.start(0, x, params, point, on_plane=True)
        try:
            functional_call(model, (params, buffers), (x,))
        finally:
            kernels.stop()
    return set(kernels.expanded)


def vmap_obstacle(model: nn.Module, params: Params, buffers: Params, x: Tensor) -> str | None:
    """Why vmap cannot batch this model well, or ``None``: a known module, or a trial over
    two points that fails or makes PyTorch warn of a per-point fallback (kept quiet)."""
    obstacles = VMAP_OBSTACLES | (CPU_VMAP_OBSTACLES if x.device.type == "cpu" else {})
    for module in model.modules():
        for kind, reason in obstacles.items():
            if isinstance(module, kind):
                return f"{type(module).__name__}: {reason}"
    stacked = {n: torch.stack([p, p]) for n, p in params.items()}

    def predict(p: Params) -> Tensor:
        return functional_call(model, (p, buffers), (x[:PROBE_SAMPLES],))

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


def _module_outputs(model, params, buffers, x) -> list[tuple[str, Tensor]]:
    names = {m: n or type(model).__name__ for n, m in model.named_modules()}
    outputs: list[tuple[str, Tensor]] = []

    def hook(module, inputs, output):
        if isinstance(output, Tensor):
            outputs.append((names[module], output.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        functional_call(model, (params, buffers), (x,))
    finally:
        for handle in handles:
            handle.remove()
    return outputs
