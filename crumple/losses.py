"""The functions evaluated at each point, how the model is called for them, and what each
batch weighs in their exact dataset mean.

* A function ``fn(output, target)`` returns the batch mean over its samples; a batch weighs
  its number of samples.
* ``"model"`` as the loss takes the loss the model computes (``model(**batch).loss``, a
  returned scalar, or a ``"loss"`` entry). For a Hugging Face language model (causal or
  masked LM, token classification) the loss averages over the target tokens (labels other
  than -100; for a causal LM, shifted by one); crumple computes that token mean itself from
  the logits in the weights' dtype (the model's own loss is cast to float32 first) and weighs
  a batch by its target tokens, so the result is the mean over all target tokens of the data,
  not a mean of batch means. The first batch checks it against the model's own loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crumple.batches import Batch
from crumple.errors import CrumpleError, user_code

MODEL_LOSS = "model"
IGNORE_INDEX = -100
TOKEN_LOSSES = {"ForCausalLM": 1, "ForMaskedLM": 0, "ForTokenClassification": 0}  # label shift
OWN_LOSS_TOLERANCE = 1e-4  # the model's own loss is float32


class Objective:
    """The named functions (``"loss"`` first) of an evaluation.

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> objective = Objective(net, {"loss": torch.nn.functional.mse_loss})
        >>> batch = Batch.of((torch.zeros(3, 2), torch.zeros(3, 1)))
        >>> objective.weights(batch)
        {'loss': 3}
    """

    def __init__(self, model: nn.Module, fns: Mapping[str, Callable | str]) -> None:
        self.fns = dict(fns)
        self.model_loss = self.fns.get("loss") == MODEL_LOSS
        self.shift = _token_shift(model) if self.model_loss else None

    @property
    def names(self) -> list[str]:
        return list(self.fns)

    @property
    def tokens(self) -> bool:
        """Whether the loss is a mean over target tokens."""
        return self.shift is not None

    def call(self, predict: Callable, batch: Batch, where: str = "model(x)") -> Any:
        """``predict(*args, **kwargs)`` with the batch's inputs (and its target, for a model
        that computes its own loss other than from the token logits)."""
        with_target = self.model_loss and not self.tokens
        args, kwargs = batch.inputs(with_target=with_target)
        try:
            with user_code("{w}, inputs {s}", w=where, s=_shapes(batch)):
                return predict(*args, **kwargs)
        except TypeError as e:
            if not with_target or "argument" not in str(e):
                raise
            raise CrumpleError(
                "loss_fn='model' calls the model with the batch's target too (model(x, y), or "
                f"labels= for a dict batch) so that it computes its loss, and this model does "
                f"not take it ({e}); pass a loss_fn(output, y) instead"
            ) from e

    def values(self, output: Any, batch: Batch) -> dict[str, Tensor]:
        """Each function's batch mean (a scalar tensor) for the model's ``output``."""
        return self.values_of(self.keep(output), batch)

    def keep(self, output: Any) -> dict[str, Any]:
        """What the functions need of ``output`` (under vmap: what a point returns)."""
        kept = {}
        if self.model_loss:
            kept["loss"] = self._logits(output) if self.tokens else own_loss(output)
        if not self.model_loss or len(self.fns) > 1:
            kept["output"] = output
        return kept

    def values_of(self, kept: dict[str, Any], batch: Batch) -> dict[str, Tensor]:
        """:meth:`values` from what :meth:`keep` kept."""
        out = {}
        for name, fn in self.fns.items():
            if fn == MODEL_LOSS:
                loss = kept["loss"]
                out[name] = self._token_mean(loss, batch) if self.tokens else loss
            else:
                out[name] = batch_mean(name, _applied(name, fn, kept["output"], batch.target))
        return out

    def weights(self, batch: Batch) -> dict[str, int]:
        """What each function's batch mean weighs: samples, or target tokens."""
        weights = dict.fromkeys(self.fns, batch.size)
        if self.tokens:
            weights["loss"] = int((self._targets(batch) != IGNORE_INDEX).sum())
        return weights

    def check(self, predict: Callable, batch: Batch) -> None:
        """For a token-mean loss: check it against the model's own loss on ``batch``."""
        if not self.tokens:
            return
        self._targets(batch)  # refuses a batch without labels
        args, kwargs = batch.inputs(with_target=True)
        with user_code("model(**batch) with labels, on the first batch"):
            output = predict(*args, **kwargs)
        theirs = float(own_loss(output))
        ours = float(self._token_mean(self._logits(output), batch))
        if abs(theirs - ours) > OWN_LOSS_TOLERANCE * max(abs(theirs), 1.0):
            raise CrumpleError(
                f"the model's own loss on the first batch is {theirs:.6g}, but the mean "
                f"cross entropy over its target tokens is {ours:.6g}; crumple cannot tell what "
                "this model's loss averages. Pass a loss_fn(output, labels) instead of 'model'"
            )

    def _targets(self, batch: Batch) -> Tensor:
        if batch.target is None:
            raise CrumpleError(
                "loss_fn='model' on a language model needs the target tokens: give each "
                "batch a 'labels' entry (-100 where a token is not a target, e.g. padding)"
            )
        return batch.target[..., self.shift :]

    def _logits(self, output: Any) -> Tensor:
        logits = getattr(output, "logits", None)
        if not isinstance(logits, Tensor):
            raise CrumpleError(
                f"the model returned {type(output).__name__} without logits; loss_fn='model' "
                "on a language model needs its logits"
            )
        return logits

    def _token_mean(self, logits: Tensor, batch: Batch) -> Tensor:
        if self.shift:
            logits = logits[..., : -self.shift, :]
        targets = self._targets(batch)
        with user_code("the cross entropy over the target tokens"):
            return F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )


def _applied(name: str, fn: Callable, output: Any, target: Any) -> Any:
    try:
        with user_code("the {n} function", n=name):
            return fn(output, target)
    except Exception as e:
        if isinstance(e, CrumpleError):
            raise
        failed = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if target is None:
            raise CrumpleError(
                f"the {name} function failed ({failed}) and the batch has no target to give "
                "it; a dict batch gives its 'labels' entry as the target: add labels, or use "
                "loss_fn='model' for a model that computes its own loss"
            ) from e
        if isinstance(output, Tensor):
            raise
        raise CrumpleError(
            f"the {name} function failed on what the model returned, {type(output).__name__} "
            f"({failed}); make forward return a tensor of predictions, or write the function "
            "for this output (e.g. output.logits)"
        ) from e


def _token_shift(model: nn.Module) -> int | None:
    """The label shift of a Hugging Face model whose loss is a token mean, else ``None``."""
    if not type(model).__module__.startswith("transformers."):
        return None
    from transformers.loss.loss_utils import LOSS_MAPPING

    loss_function = getattr(model, "loss_function", None)
    for kind, shift in TOKEN_LOSSES.items():
        if loss_function is not None and loss_function is LOSS_MAPPING.get(kind):
            return shift
    return None


def own_loss(output: Any) -> Tensor:
    """The loss in a model's output: a scalar, ``.loss``, ``["loss"]`` or the first entry."""
    loss = output
    if not isinstance(output, Tensor):
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, Mapping):
            loss = output.get("loss")
        if loss is None and isinstance(output, (tuple, list)) and output:
            loss = output[0]
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise CrumpleError(
            f"loss_fn='model' takes the loss the model returns, but it returned "
            f"{type(output).__name__} with no scalar loss; return the batch mean loss (as a "
            "scalar, .loss or ['loss']) when the model is given its targets, or pass a loss_fn"
        )
    return loss


def batch_mean(name: str, value: Any) -> Tensor:
    """``value`` if it is a scalar tensor (a function's batch mean), else a clear error."""
    if not isinstance(value, Tensor):
        raise CrumpleError(
            f"the {name} function returned {type(value).__name__} {value!r}; it must return "
            "the batch mean as a scalar tensor (e.g. torch.nn.functional.mse_loss(pred, y))"
        )
    if value.dim() != 0:
        raise not_a_mean(name, value.shape)
    return value


def not_a_mean(name: str, shape) -> CrumpleError:
    return CrumpleError(
        f"{name} function returned shape {tuple(shape)} per point; "
        "it must return the batch mean as a scalar (reduction='mean')"
    )


def _shapes(batch: Batch) -> str:
    return ", ".join(f"{n} {tuple(t.shape)}" for n, t in batch.named_parts())


class Means:
    """Exact dataset means at a block of points, from batch means and their weights (a
    batch of weight 0 adds nothing).

    Example:
        >>> m = Means(["loss"], (2,))
        >>> m.add({"loss": torch.tensor([1.0, 2.0])}, {"loss": 1})
        >>> m.add({"loss": torch.tensor([4.0, 2.0])}, {"loss": 2})
        >>> m.result()["loss"].tolist()
        [3.0, 2.0]
    """

    def __init__(self, names, shape: tuple[int, ...]) -> None:
        self.sums = {name: torch.zeros(shape, dtype=torch.float64) for name in names}
        self.totals = {name: torch.zeros(shape, dtype=torch.float64) for name in names}

    def add(self, values: Mapping[str, Any], weights: Mapping[str, int], index=...) -> None:
        """Add batch means ``values`` (at ``index`` of the block, or all of it)."""
        for name, v in values.items():
            w = weights[name]
            if w == 0:
                continue
            v = v.detach().double().cpu() if isinstance(v, Tensor) else v
            self.sums[name][index] += v * w
            self.totals[name][index] += w

    def result(self) -> dict[str, Tensor]:
        for name, total in self.totals.items():
            if not bool((total > 0).all()):
                raise CrumpleError(
                    f"the data holds nothing for {name} to average over (no samples, or no "
                    "target tokens: every label is -100)"
                )
        return {name: s / self.totals[name] for name, s in self.sums.items()}
