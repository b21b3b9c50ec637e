"""How an evaluation runs, as one typed value: strategy, sizes, device, dtype, memory budget.

The same :class:`Settings` travels everywhere a run is described: ``surface(**options)``
builds it, the chosen strategy and the measured sizes are filled in (``resolved``), the
store keeps it as the run's plan, the Dask payload carries it to the workers and
``ds.attrs["settings"]`` records it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import torch

from crumple.errors import CrumpleError

DEFAULT_MAX_MEMORY = 2 * 2**30
BATCHINGS = ("auto", "rebatch", "user")
PRECISIONS = (None, "bf16", "tf32")
DATA_SHARE = 2  # held data may take 1/DATA_SHARE of max_memory


@dataclasses.dataclass(frozen=True)
class Settings:
    """How the points are evaluated; ``None`` sizes are chosen by the evaluator.

    Attributes:
        strategy: a name in ``crumple.evaluation.STRATEGIES`` or ``"auto"``.
        batch_size: samples per forward pass when the data is re-batched.
        points_per_call: points evaluated together (vmap); larger blocks are split.
        tile_size: grid points per tile (stored, resumed and sent to a Dask worker as one).
        device: where to compute, e.g. ``"cpu"`` or ``"cuda:1"`` (default: the plane's).
        dtype: ``"float32"`` or ``"float64"`` (default: the plane's).
        max_memory: bytes that evaluation may hold: the data (up to half of it, else the
            data is streamed), the points of one call and the cached layer products.
        stream: read the data afresh from its loader for each block of points (``True``),
            hold it in memory (``False``), or stream only when it exceeds half of
            ``max_memory`` (``None``).
        precision: ``None`` (the dtype's own), ``"bf16"`` (forward passes under bfloat16
            autocast; the means still accumulate in float64) or ``"tf32"`` (CUDA matmuls
            in TensorFloat-32).
        batching: ``"rebatch"`` (cache-sized batches), ``"user"`` (the data's own batches,
            for a model whose output for a sample depends on its batch) or ``"auto"``.

    Example:
        >>> s = Settings(strategy="loop", tile_size=64)
        >>> Settings.from_json(s.to_json()) == s
        True
    """

    strategy: str = "auto"
    batch_size: int | None = None
    points_per_call: int | None = None
    tile_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    max_memory: int = DEFAULT_MAX_MEMORY
    batching: str = "auto"
    stream: bool | None = None
    precision: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "points_per_call", "tile_size", "max_memory"):
            _check_count(name, getattr(self, name))
        from crumple.evaluation.strategies import STRATEGIES  # the registry imports torch.func

        if self.strategy not in ("auto", *STRATEGIES):
            raise CrumpleError(
                f"strategy must be 'auto' or one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.batching not in BATCHINGS:
            raise CrumpleError(f"batching must be one of {BATCHINGS}, got {self.batching!r}")
        if self.stream not in (None, True, False):
            raise CrumpleError(f"stream must be True, False or None, got {self.stream!r}")
        if self.precision not in PRECISIONS:
            raise CrumpleError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}; None keeps "
                "the dtype's own arithmetic"
            )
        object.__setattr__(self, "device", _device_name(self.device))
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))

    @classmethod
    def from_options(
        cls, chunk_size: int | None = None, *, also: tuple[str, ...] = (), **options: Any
    ) -> Settings:
        """Settings from ``surface``'s keyword arguments; ``chunk_size`` sets both the tile
        size and the points per call. ``also`` names the caller's other keywords, for the
        message that refuses an unknown one.

        Example:
            >>> Settings.from_options(chunk_size=8).points_per_call
            8
            >>> Settings.from_options(chunks=8)
            Traceback (most recent call last):
            ...
            crumple.errors.CrumpleError: unknown option 'chunks'; the options are ...
        """
        known = {f.name for f in dataclasses.fields(cls)} | {"chunk_size"}
        for name in options:
            if name not in known:
                raise CrumpleError(
                    f"unknown option {name!r}; the options are "
                    f"{', '.join(sorted(known | set(also)))}"
                )
        if options.get("max_memory") is None:
            options.pop("max_memory", None)
        if chunk_size is not None:
            _check_count("chunk_size", chunk_size)
            options = {"tile_size": chunk_size, "points_per_call": chunk_size, **options}
        return cls(**options)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> Settings:
        """Read :meth:`to_json`'s text (or a plan written before settings had a type, whose
        ``chunk_size`` was the tile size)."""
        fields = dict(json.loads(text) if isinstance(text, str) else text)
        if "chunk_size" in fields:  # stores written before tiles and calls were told apart
            fields.setdefault("tile_size", fields["chunk_size"])
            fields.setdefault("points_per_call", fields.pop("chunk_size"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in known})

    @property
    def data_budget(self) -> int:
        """Bytes the data may take in memory before it is streamed."""
        return self.max_memory // DATA_SHARE

    @property
    def torch_device(self) -> torch.device | None:
        return None if self.device is None else torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return None if self.dtype is None else getattr(torch, self.dtype)


def _check_count(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise CrumpleError(
            f"{name} must be a positive whole number, got {value!r}"
            + ("; leave it out to let crumple choose" if name != "max_memory" else "")
        )


def _device_name(device: Any) -> str | None:
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CrumpleError(
            f"device {device!r} is not a device; write e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CrumpleError(
            f"device {str(device)!r} asks for CUDA, which this PyTorch build or machine does "
            "not have; leave device out to compute on the CPU"
        )
    return str(device)


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "float64"):
        raise CrumpleError(
            f"dtype {dtype!r} is not supported; use torch.float32 or torch.float64 "
            "(or the strings 'float32', 'float64')"
        )
    return name
