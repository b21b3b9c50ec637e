"""What the command line names by text: objects as ``package.module:name``, weights files,
loss functions. Each failure says what was given and how to fix it."""

from __future__ import annotations

import importlib
import json
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crumple.batches import Data
from crumple.errors import CrumpleError
from crumple.files import inside
from crumple.losses import Objective
from crumple.names import LOSSES as LOSS_NAMES
from crumple.params import cast, evaluation_mode

LOSSES: dict[str, Callable] = {name: getattr(F, fn) for name, fn in LOSS_NAMES.items()}


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


def load_model(spec: str, weights: str | None = None, option: str = "--weights") -> nn.Module:
    """Call the factory ``spec`` names (or, for ``hf:FOLDER``, build the Hugging Face model
    saved there: :func:`hf_model`), and load ``weights`` (given as ``option``) into the model.

    Example:
        >>> load_model("torch.nn:Identity")
        Identity()
    """
    if spec.startswith("hf:"):
        model = hf_model(spec[3:])
    else:
        factory = load_object(spec, "--model")
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise CrumpleError(
            f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module; "
            "name a function (or class) that builds the model and returns it"
        )
    if weights is not None:
        load_weights(model, weights, option)
    return model


def read_state_dict(path: str | Path, option: str) -> dict[str, Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file, such as a
    Lightning ``.ckpt`` (its ``"state_dict"``), read with ``weights_only=True``: no code is
    unpickled, and a file that needs it is refused with what to do.

    Example:
        >>> import tempfile
        >>> file = tempfile.mkdtemp() + "/x.ckpt"
        >>> torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, file)
        >>> read_state_dict(file, "--weights")
        {'w': tensor([1.])}
    """
    file = Path(path)
    if not file.is_file():
        raise CrumpleError(f"{option} {str(path)!r}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"such as {found.group(1)}" if found else str(e).strip()[:200]
        raise CrumpleError(
            f"{option} {str(path)!r} holds objects that only unpickling code can rebuild "
            f"({what}), and crumple never unpickles code. Save the weights alone, in a "
            "Python you trust: torch.save(torch.load(path, weights_only=False)['state_dict'], "
            "'weights.pt') (or model.state_dict()), and pass that file"
        ) from e
    except Exception as e:
        raise CrumpleError(
            f"{option} {str(path)!r} cannot be read as weights ({type(e).__name__}: {e}); "
            "save them with torch.save(model.state_dict(), path) or safetensors"
        ) from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CrumpleError(
            f"{option} {str(path)!r} holds {type(state).__name__}, not a state dict of "
            "tensors; save model.state_dict()"
        )
    return state


def load_weights(model: nn.Module, path: str, option: str) -> None:
    """Load the state dict in ``path`` into ``model``, all of it. Keys that carry one more
    prefix than the model's, as a LightningModule's checkpoint holds the network that
    ``self.model = ...`` made (``model.0.weight`` for ``0.weight``), are read without it;
    the keys outside that prefix (the module's other attributes) are left out.

    Example:
        >>> import tempfile
        >>> file = tempfile.mkdtemp() + "/lit.ckpt"
        >>> torch.save({"state_dict": {"net.weight": torch.ones(1, 1)}}, file)
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> load_weights(net, file, "--weights"); net.weight.item()
        1.0
    """
    state = read_state_dict(path, option)
    expected = model.state_dict()
    state = _without_prefix(state, expected)
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
            f"{unexpected[:8]}, other shapes {resized[:8]}; the file's keys are like "
            f"{sorted(state)[:4]}, the model's like {sorted(expected)[:4]}. Use the weights "
            "saved from the model the --model factory builds (for a Lightning checkpoint, "
            "the LightningModule itself, or the network it holds as one attribute)"
        )
    model.load_state_dict(state)


def _without_prefix(state: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the one key prefix (``"model."``, ``"net.backbone."``) whose removal
    gives exactly the model's keys; ``state`` itself when none does, or when it fits."""
    if state.keys() == expected.keys() or not expected:
        return state
    some = next(iter(expected))
    prefixes = {k[: -len(some)] for k in state if k.endswith(f".{some}")}
    fits = {}
    for prefix in sorted(prefixes):
        inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if inner.keys() == expected.keys():
            fits[prefix] = inner
    if len(fits) > 1:
        raise CrumpleError(
            f"the file holds the model's weights under {len(fits)} prefixes, {sorted(fits)}, "
            "and crumple will not guess which: save the one you want alone, e.g. "
            "{k.removeprefix('net.'): v for k, v in state_dict.items() if k.startswith('net.')}"
        )
    return next(iter(fits.values()), state)


def hf_model(folder: str | Path, option: str = "--model") -> nn.Module:
    """The Hugging Face model saved in ``folder`` (``save_pretrained``): its config
    (``AutoConfig``, local files only: nothing is downloaded), the class its
    ``architectures`` names, and its weights from ``model.safetensors`` or
    ``pytorch_model.bin`` (sharded too), read without unpickling code. Weights tied to
    others (an output layer sharing the embedding) may be absent from the files.

    Example:
        >>> hf_model("no/such/folder")
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: --model 'hf:no/such/folder': 'no/such/folder' is not a ...
    """
    spec = f"hf:{folder}"
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CrumpleError(
            f"{option} {spec!r}: {str(folder)!r} is not a Hugging Face model folder (it holds no "
            "config.json); give the folder model.save_pretrained(FOLDER) wrote, or a factory "
            "as MODULE:FUNCTION"
        )
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as e:
        raise CrumpleError(
            f"{option} {spec!r} needs transformers, which is not installed; install it with: "
            "pip install 'crumple[hf]'"
        ) from e
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise CrumpleError(
            f"{option} {spec!r}: its config.json cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}); crumple runs no code from "
            "the folder: save the model with a transformers class"
        ) from e
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise CrumpleError(
            f"{option} {spec!r}: config.json names no model class of transformers "
            f"(architectures={names!r}); save the model with save_pretrained, which writes it"
        )
    model = cls(config)
    _load_hf_weights(model, path, spec, option)
    return model.eval()


def _load_hf_weights(model: nn.Module, path: Path, spec: str, option: str) -> None:
    """Read the weight files of a ``save_pretrained`` folder into ``model``."""
    files = []
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = path / f"{name}.index.json"
        if index.is_file():
            files = _shards(index, option)
        elif (path / name).is_file():
            files = [path / name]
        if files:
            break
    if not files:
        raise CrumpleError(
            f"{option} {spec!r}: the folder holds no model.safetensors or pytorch_model.bin; "
            "save the model with model.save_pretrained(FOLDER)"
        )
    state: dict[str, Tensor] = {}
    for file in files:
        state |= read_state_dict(file, option)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CrumpleError(
            f"{option} {spec!r}: the weights do not fit the model its config builds "
            f"({str(e).splitlines()[-1].strip()[:300]}); save them again with save_pretrained"
        ) from e
    now = model.state_dict()
    loaded = {now[k].data_ptr() for k in state if k in now}
    missing = [k for k in result.missing_keys if now[k].data_ptr() not in loaded]  # not tied
    if missing or result.unexpected_keys:
        raise CrumpleError(
            f"{option} {spec!r}: the weights do not fit the model its config builds: missing "
            f"{missing[:8]}, unexpected {list(result.unexpected_keys)[:8]}; save them again "
            "with save_pretrained of this transformers version"
        )


def _shards(index: Path, option: str) -> list[Path]:
    """The weight files a sharded model's ``index`` names in its ``weight_map`` (parameter
    name -> file name), each inside the index's folder (:func:`crumple.files.inside`)."""
    fix = "save the model again with model.save_pretrained(FOLDER), which writes it"
    try:
        weight_map = json.loads(index.read_bytes()).get("weight_map")
    except (OSError, ValueError, AttributeError) as e:
        raise CrumpleError(
            f"{option}: the shard index {str(index)!r} is not a JSON object "
            f"({type(e).__name__}: {str(e)[:200]}); {fix}"
        ) from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise CrumpleError(
            f"{option}: the shard index {str(index)!r} has no weight_map (parameter name -> "
            f"file name), it has {weight_map!r:.80}; {fix}"
        )
    bad = {k: v for k, v in weight_map.items() if not isinstance(v, str)}
    if bad:
        raise CrumpleError(
            f"{option}: the weight_map of {str(index)!r} maps {next(iter(bad))!r} to "
            f"{next(iter(bad.values()))!r}, not to a file name; {fix}"
        )
    return [inside(index.parent, shard, index) for shard in sorted(set(weight_map.values()))]


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


def check_fit(
    model: nn.Module,
    loss_fn: Callable | str,
    data: Data,
    *,
    data_name: str = "data=",
    loss_name: str = "loss_fn=",
) -> None:
    """Run the model and the loss on two samples, to turn shape errors into a clear message
    (floating-point data in the weights' dtype, as evaluation casts it). The message names
    the data and the loss as ``data_name`` and ``loss_name`` (the CLI: ``--data``, ``--loss``).

    Example:
        >>> from crumple.batches import load
        >>> data = load((torch.ones(4, 2), torch.ones(4, 1)))
        >>> check_fit(torch.nn.Linear(3, 1), torch.nn.functional.mse_loss, data)
        Traceback (most recent call last):
        ...
        crumple.errors.CrumpleError: the loader yields batches of ...; make data= yield what ...
    """
    weight = next(model.parameters(), None)
    batch = data.first.rows(slice(0, 2))
    if weight is not None:  # only the two samples, not the whole data
        batch = batch.map(lambda t: cast(t, device=weight.device, dtype=weight.dtype))
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
            f"{type(e).__name__}: {str(e).splitlines()[0]}; make {data_name} yield what the "
            f"model and {loss_name} expect ((inputs, targets) pairs, or dicts with labels for "
            "the model's own loss)"
        ) from e
    if not isinstance(value, Tensor) or value.dim() != 0:
        raise CrumpleError(f"{loss_name} must return the batch mean as a scalar (reduction='mean')")
