"""What the command line names by text: objects as ``package.module:name``, weights files,
loss functions. Each failure says what was given and how to fix it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crumple.batches import Data
from crumple.errors import CrumpleError
from crumple.losses import Objective
from crumple.params import cast, evaluation_mode

LOSSES: dict[str, Callable] = {
    "cross_entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "nll": F.nll_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "huber": F.huber_loss,
}


def accuracy(pred: Tensor, y: Tensor) -> Tensor:
    """The fraction of samples whose largest output is the target class.

    Example:
        >>> float(accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])))
        0.5
    """
    return (pred.argmax(dim=-1) == y).to(pred.dtype).mean()


METRICS: dict[str, Callable] = {"accuracy": accuracy, **LOSSES}


def load_object(spec: str, what: str) -> Any:
    """Import ``package.module:name`` (the current folder is importable).

    Example:
        >>> load_object("math:pi", "--model")
        3.141592653589793
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CrumpleError(
            f"{what} {spec!r} is not of the form package.module:name; "
            f"e.g. {what} mymodels:make_model for make_model() in mymodels.py"
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise CrumpleError(
            f"{what} {spec!r}: cannot import module {module_name!r} ({e}); check the name, "
            "and run from the folder that holds it or add that folder to PYTHONPATH"
        ) from e
    try:
        return getattr(module, attr)
    except AttributeError:
        names = sorted(n for n in vars(module) if not n.startswith("_"))
        raise CrumpleError(
            f"{what} {spec!r}: module {module_name!r} has no {attr!r}; it has: "
            f"{', '.join(names[:20]) or 'nothing public'}"
        ) from None


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """Call the factory ``spec`` names, and load ``weights`` into the model it returns."""
    factory = load_object(spec, "--model")
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise CrumpleError(
            f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module; "
            "name a function (or class) that builds the model and returns it"
        )
    if weights is not None:
        load_weights(model, weights, "--weights")
    return model


def read_state_dict(path: str, option: str) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file (read with
    ``weights_only=True``: no code is unpickled)."""
    file = Path(path)
    if not file.is_file():
        raise CrumpleError(f"{option} {path!r}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CrumpleError(
            f"{option} {path!r} cannot be read as weights ({type(e).__name__}: {e}); save them "
            "with torch.save(model.state_dict(), path) or safetensors"
        ) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CrumpleError(
            f"{option} {path!r} holds {type(state).__name__}, not a state dict of tensors; "
            "save model.state_dict()"
        )
    return state


def load_weights(model: nn.Module, path: str, option: str) -> None:
    state = read_state_dict(path, option)
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    resized = sorted(
        f"{n} {tuple(state[n].shape)} vs {tuple(expected[n].shape)}"
        for n in expected.keys() & state.keys()
        if state[n].shape != expected[n].shape
    )
    if missing or unexpected or resized:
        raise CrumpleError(
            f"{option} {path!r} does not fit the model: missing {missing[:8]}, unexpected "
            f"{unexpected[:8]}, other shapes {resized[:8]}; use the weights saved from the "
            "model the --model factory builds"
        )
    model.load_state_dict(state)


def load_data(spec: str) -> Any:
    """The data ``spec`` names: a loader object, or a function that returns one."""
    obj = load_object(spec, "--data")
    if callable(obj) and not hasattr(obj, "__iter__"):
        obj = obj()
    return obj


def loss_function(name: str, what: str = "--loss", table: dict | None = None) -> Callable | str:
    """A named loss, ``"model"`` (the loss the model computes; --loss only), or
    ``package.module:function``."""
    if name == "model" and table is None:
        return name
    table = LOSSES if table is None else table
    if name in table:
        return table[name]
    if ":" in name:
        fn = load_object(name, what)
        if not callable(fn):
            raise CrumpleError(f"{what} {name!r} is not a function")
        return fn
    raise CrumpleError(
        f"{what} {name!r} is not known; use one of {', '.join(table)}"
        + (", model (the loss the model computes)" if what == "--loss" else "")
        + " or package.module:function"
    )


def check_fit(model: nn.Module, loss_fn: Callable | str, data: Data) -> None:
    """Run the model and the loss on two samples, to turn shape errors into a clear message
    (floating-point data in the weights' dtype, as evaluation casts it)."""
    weight = next(model.parameters(), None)
    batch = data.first.rows(slice(0, 2))
    if weight is not None:  # only the two samples, not the whole data
        batch = batch.map(lambda t: cast(t, dtype=weight.dtype))
    objective = Objective(model, {"loss": loss_fn})
    try:
        with torch.no_grad(), evaluation_mode(model):
            value = objective.values(objective.call(model, batch), batch)["loss"]
    except CrumpleError:
        raise
    except Exception as e:
        parts = data.first.named_parts()
        shapes = ", ".join(f"{n} of shape {tuple(t.shape)} ({t.dtype})" for n, t in parts)
        raise CrumpleError(
            f"the loader yields batches of {shapes}, and the model or the loss fails on them: "
            f"{type(e).__name__}: {str(e).splitlines()[0]}; make --data yield what the model "
            "and --loss expect ((inputs, targets) pairs, or dicts with labels for --loss model)"
        ) from e
    if not isinstance(value, Tensor) or value.dim() != 0:
        raise CrumpleError("--loss must return the batch mean as a scalar (reduction='mean')")
