"""BatchNorm running statistics recomputed at a point of weight space, functionally.

A BatchNorm layer in eval mode normalises with running statistics gathered at the weights
it was trained with; at another point of weight space they no longer describe the layer's
input. Curve-finding tools therefore recompute them after moving the weights ("BatchNorm
recalibration"). The definition, which ``torch.optim.swa_utils.update_bn`` implements: set
the weights on a copy of the model, reset every BatchNorm layer's running statistics, set
``momentum=None`` (a cumulative average), run the recalibration batches without gradients in
training mode, back to eval mode. After it, for each BatchNorm layer that tracks running
statistics,

* ``running_mean`` is the average over its calls of the batch mean of its input,
* ``running_var`` the average of the unbiased batch variance (over all dims but dim 1),
* ``num_batches_tracked`` the number of calls (one per batch unless a layer is reused).

:class:`Recalibration` computes the same values without writing anything: the batches run
through a private copy of the model (which shares the user's tensors) with
``torch.func.functional_call``, its BatchNorm layers in training mode with ``momentum=1``;
for each call of a layer, hooks lend it fresh running statistics, which its own forward
overwrites with the batch mean and unbiased batch variance, and take them back, local to
the call, to be averaged. It works under (nested) ``torch.func.vmap`` over points, so a
batched strategy can call, inside its vmaps,
``functional_call(model, (params, recal.buffers_at(params, buffers)), args, kwargs)``.

One deliberate difference from ``update_bn``: only the BatchNorm layers run in training
mode; everything else (dropout, say) stays in eval mode, so the statistics are deterministic.
The statistics carry no gradient (the passes run under ``torch.no_grad``), as in
``update_bn``. A layer that no batch reaches gets reset values (mean 0, variance 1, count
0), as ``update_bn`` leaves it. Instance and group norms are not recalibrated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from crumple.errors import CrumpleError, CrumpleTypeError, user_code

__all__ = ["Recalibration", "batchnorm_layers"]

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """The BatchNorm layers of ``model`` (any dims, ``SyncBatchNorm`` too) that track running
    statistics, by module name (``""`` for the model itself).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3),
        ...                     nn.BatchNorm1d(3, track_running_stats=False))
        >>> list(batchnorm_layers(net))
        ['1']
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        and module.track_running_stats
        and module.running_mean is not None
    }


def _key(layer: str, statistic: str) -> str:
    return f"{layer}.{statistic}" if layer else statistic


def _checked_inputs(inputs: Any) -> list[tuple[tuple, dict]]:
    """``inputs`` as a list of ``(args, kwargs)``, or an error that says what was wrong."""
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Sequence):
        raise CrumpleTypeError(
            f"recalibration inputs must be a list of (args, kwargs) pairs, one per batch; "
            f"got {type(inputs).__name__}: {inputs!r:.80}"
        )
    if not inputs:
        raise CrumpleError(
            "recalibration needs at least one batch and inputs is empty; pass one "
            "(args, kwargs) pair per batch, e.g. [((x,), {}) for x, y in loader]"
        )
    out = []
    for b, pair in enumerate(inputs):
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2
        if not (ok and isinstance(pair[0], (tuple, list)) and isinstance(pair[1], Mapping)):
            raise CrumpleTypeError(
                f"recalibration batch {b} must be an (args, kwargs) pair, the model being "
                f"called as model(*args, **kwargs), e.g. ((x,), {{}}); got {pair!r:.80}"
            )
        out.append((tuple(pair[0]), dict(pair[1])))
    return out


def _batch_statistics_copy(model: nn.Module, layers: Sequence[str]) -> nn.Module:
    """A copy of ``model`` sharing its parameters and buffers (only the modules are new),
    in eval mode but for the named BatchNorm layers: those train with ``momentum=1`` and
    have no running statistics until a :class:`_Collector` lends them some."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    work = copy.deepcopy(model, memo=shared)
    work.eval()
    for name in layers:
        layer = work.get_submodule(name)
        layer.momentum = 1.0
        layer.running_mean = layer.running_var = layer.num_batches_tracked = None
        layer.train()
    return work


def _set_statistics(layer: nn.Module, mean: Any, var: Any, count: Any) -> None:
    """Set a copy's BatchNorm buffers. Straight into ``_buffers`` (the names are registered
    buffers): ``Module.__setattr__`` costs more than a small layer's forward, six times per
    layer and batch."""
    layer._buffers.update(running_mean=mean, running_var=var, num_batches_tracked=count)


class _Collector:
    """The statistics of one ``buffers_at`` call: per layer, the batch mean and unbiased
    batch variance of its input at each of its calls, in call order.

    Before each call of a layer, fresh running statistics, batched as its input is under
    vmap, are lent to the copy's layer; with ``momentum=1`` the layer's own forward writes
    the batch mean and unbiased variance into them (the kernel and the formula
    ``update_bn`` relies on); after the call they are taken back into ``found``.
    """

    def __init__(self, work: nn.Module, layers: Sequence[str]) -> None:
        self.batch = 0
        self.found: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in layers}
        self.layers = {name: work.get_submodule(name) for name in layers}
        self.handles: list[RemovableHandle] = []
        for name, layer in self.layers.items():
            self.handles.append(layer.register_forward_pre_hook(self._lend(name), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._take(name)))

    def close(self) -> None:
        """Remove the hooks and whatever statistics are still lent (after an error)."""
        for handle in self.handles:
            handle.remove()
        for layer in self.layers.values():
            _set_statistics(layer, None, None, None)

    def _lend(self, name: str) -> Callable:
        def pre_hook(layer: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, Tensor) or x.dim() < 2:
                return  # the layer itself says what is wrong with its input
            if x.numel() <= x.shape[1]:
                raise CrumpleError(
                    f"recalibration batch {self.batch} gives BatchNorm layer {name!r} an "
                    f"input of shape {tuple(x.shape)}: one value per channel, and BatchNorm "
                    "in training mode needs more than one; use batches of at least 2 samples "
                    "(a loader's last batch can be a single sample: drop_last=True avoids it)"
                )
            # One value per channel, batched at the vmap levels x is batched at.
            channels = x.detach().flatten(2)[0, :, 0] if x.dim() > 2 else x.detach()[0]
            contiguous = torch.contiguous_format
            _set_statistics(
                layer,
                torch.zeros_like(channels, memory_format=contiguous),
                torch.ones_like(channels, memory_format=contiguous),
                torch.zeros((), dtype=torch.long, device=x.device),
            )

        return pre_hook

    def _take(self, name: str) -> Callable:
        def hook(layer: nn.Module, args: tuple, output: Any) -> None:
            if layer.running_mean is not None:
                self.found[name].append((layer.running_mean, layer.running_var))
            _set_statistics(layer, None, None, None)

        return hook


class Recalibration:
    """BatchNorm running statistics of ``model`` at any point of weight space, recomputed
    over fixed batches without touching the model.

    Args:
        model: the user's model; never written to (a private copy shares its tensors).
        inputs: per recalibration batch, the ``(args, kwargs)`` the model is called with,
            ``model(*args, **kwargs)``, on the device and in the dtype of the weights.

    Raises:
        CrumpleError: the model has no BatchNorm layer that tracks running statistics, or
            ``inputs`` is empty.
        CrumpleTypeError: an entry of ``inputs`` is not an ``(args, kwargs)`` pair.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).eval()
        >>> x = torch.randn(16, 3)
        >>> recal = Recalibration(net, [((x[:8],), {}), ((x[8:],), {})])
        >>> params = {n: 2 * p for n, p in net.named_parameters()}  # another point
        >>> buffers = recal.buffers_at(params, dict(net.named_buffers()))
        >>> h = x @ params["0.weight"].T + params["0.bias"]
        >>> expected = (h[:8].mean(0) + h[8:].mean(0)) / 2
        >>> bool(torch.allclose(buffers["1.running_mean"], expected, atol=1e-6))
        True
        >>> int(buffers["1.num_batches_tracked"]), float(net[1].running_mean.abs().sum())
        (2, 0.0)
        >>> functional_call(net, (params, buffers), (x,)).shape  # eval mode, recalibrated
        torch.Size([16, 1])
    """

    def __init__(self, model: nn.Module, inputs: list[tuple[tuple, dict]]) -> None:
        self.layers = batchnorm_layers(model)
        if not self.layers:
            untracked = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
            why = (
                f"its BatchNorm layers {untracked} use batch statistics "
                "(track_running_stats=False) in eval mode too"
                if untracked
                else "it has no BatchNorm layer"
            )
            raise CrumpleError(
                f"recalibrate has nothing to do: the model ({type(model).__name__}) has no "
                f"BatchNorm layer that tracks running statistics; {why}. Leave recalibration "
                "off for this model"
            )
        self.inputs = _checked_inputs(inputs)
        self.buffer_names = tuple(_key(n, s) for n in self.layers for s in STATISTICS)
        self._work = _batch_statistics_copy(model, list(self.layers))

    def buffers_at(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``buffers`` with every tracked BatchNorm layer's ``running_mean``, ``running_var``
        and ``num_batches_tracked`` replaced by the recalibrated values at ``params``;
        everything else as given.

        Purely functional, so it may run under ``torch.func.vmap`` (nested too) with
        batched ``params``: the statistics come back batched the same way (the count is
        a plain long scalar). The means and variances take the dtype of the buffers they
        replace (from ``buffers``, else the model's) and the device of the computation.

        Args:
            params: the weights, by parameter name; a parameter left out is the model's own.
            buffers: the model's buffers by name, as ``functional_call`` takes them.

        Raises:
            CrumpleError: a batch gives a BatchNorm layer one value per channel (the
                message names the batch and the layer).

        Example:
            >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval()
            >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
            >>> recal = Recalibration(net, [((x,), {})])
            >>> one = {"0.weight": torch.eye(2), "0.bias": torch.zeros(2)}
            >>> out = recal.buffers_at(one, dict(net.named_buffers()))
            >>> out["1.running_mean"].tolist(), out["1.running_var"].tolist()
            ([2.0, 3.0], [4.0, 4.0])
        """
        collector = _Collector(self._work, list(self.layers))
        given = {k: v for k, v in buffers.items() if k not in self.buffer_names}
        try:
            with torch.no_grad():
                for b, (args, kwargs) in enumerate(self.inputs):
                    collector.batch = b
                    with user_code("the model on recalibration batch {b}", b=b):
                        functional_call(self._work, (params, given), args, kwargs)
        finally:
            collector.close()
        out = dict(buffers)
        for name, layer in self.layers.items():
            out.update(self._statistics(name, layer, collector.found[name], buffers))
        return out

    def _statistics(
        self,
        name: str,
        layer: _BatchNorm,
        found: list[tuple[Tensor, Tensor]],
        buffers: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """One layer's three recalibrated buffers from the statistics of its calls."""
        keys = [_key(name, s) for s in STATISTICS]
        mean_like = buffers.get(keys[0], layer.running_mean)
        var_like = buffers.get(keys[1], layer.running_var)
        if not found:  # no batch reached the layer: reset values, as update_bn leaves them
            mean = torch.zeros_like(mean_like)
            var = torch.ones_like(var_like)
            device = mean.device
        else:
            means, variances = zip(*found)
            mean = torch.stack(means).mean(0).to(mean_like.dtype)
            var = torch.stack(variances).mean(0).to(var_like.dtype)
            device = means[0].device
        count_like = buffers.get(keys[2], layer.num_batches_tracked)
        count = torch.tensor(len(found), dtype=count_like.dtype, device=device)
        return dict(zip(keys, (mean, var, count)))
