"""The evaluator: data, buffers and plane prepared once (``prepare``), a strategy chosen or
given, and blocks of points split into calls of ``points_per_call``."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from crumple.batches import Batch, Data, inputs_only, load
from crumple.errors import CrumpleError
from crumple.evaluation import probes
from crumple.evaluation.choice import Choice, choose
from crumple.evaluation.extras import Extra
from crumple.evaluation.kernels import Kernels
from crumple.evaluation.points import Points
from crumple.evaluation.recalibration import Recalibration, batchnorm_layers
from crumple.evaluation.settings import Settings
from crumple.evaluation.strategies import STRATEGIES, Strategy
from crumple.grid import blocks
from crumple.losses import Objective
from crumple.params import Params, buffers_of, cast
from crumple.plane import Plane

WORKING_SET = 2**23  # elements of activations per call: small enough to stay in cache
CACHE_SHARE = 4  # expanded-layer products may use 1/CACHE_SHARE of max_memory
GPU_SHARE = 0.8  # of a GPU's free memory that the points of one call may take


_ALLOCATOR_SETTLED = [False]


def settle_allocator() -> None:
    """Allocate and free one 32 MiB block, once per process.

    glibc's malloc serves blocks above an adaptive threshold with mmap and returns freed
    memory to the system past another; freeing a block raises both, up to 32 MiB and 64 MiB.
    Without this, the megabyte-sized tensors of each forward pass are mapped and faulted in
    again at every grid point (measured on the MLP benchmark: 4x more page faults, 18% more
    time). The process may then keep up to 64 MiB of freed memory for reuse.
    """
    if not _ALLOCATOR_SETTLED[0]:
        _ALLOCATOR_SETTLED[0] = True
        block = torch.empty((32 * 2**20 - 2**16) // 4, dtype=torch.float32)
        del block


@dataclass
class Task:
    """What every strategy evaluates: the model (in eval mode, never written to), the
    functions (``"loss"`` first) with how the model is called for them, the data, buffers
    and plane on the computation's device and dtype, and the layer kernels."""

    model: nn.Module
    objective: Objective
    data: Data
    buffers: Params
    plane: Plane | None
    origin: Params
    kernels: Kernels
    data_cast: str | None = None  # "float32 -> float64" when the data was cast
    recalibration: Recalibration | None = None  # BatchNorm statistics at each point
    precision_name: str | None = None  # "bf16" or "tf32" (Settings.precision)
    _weights: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def fns(self) -> dict:
        return self.objective.fns

    def weights(self, b: int, batch: Batch) -> dict[str, int]:
        """What batch ``b`` weighs in each function's mean (counted once for held data)."""
        if self.data.streamed:
            return self.objective.weights(batch)
        if b not in self._weights:
            self._weights[b] = self.objective.weights(batch)
        return self._weights[b]

    def precision(self):
        """The arithmetic the settings ask for: bfloat16 autocast or TF32 matmuls."""
        return arithmetic(self.precision_name, self.device)

    def buffers_at(self, params: Params) -> Params:
        """The buffers to evaluate ``params`` with (recalibrated there when asked)."""
        if self.recalibration is None:
            return self.buffers
        return self.recalibration.buffers_at(params, self.buffers)

    def facts(self) -> dict[str, object]:
        """What ``ds.attrs`` says about the data."""
        facts: dict[str, object] = {"n_samples": self.data.n_samples}
        if self.objective.tokens and not self.data.streamed:
            facts["n_target_tokens"] = sum(w["loss"] for w in self._weights.values())
        if self.data.streamed:
            facts["data"] = "streamed"
        if self.data_cast:
            facts["data_cast"] = self.data_cast
        if self.recalibration is not None:
            n = len(self.recalibration.inputs)
            facts["recalibrated"] = f"BatchNorm statistics recomputed at each point ({n} batches)"
        elif batchnorm_layers(self.model):
            facts["batchnorm"] = (
                "the model's running statistics at every point, not those of the weights there; "
                "recalibrate=LOADER (--recalibrate) recomputes them at each point"
            )
        return facts

    @property
    def device(self) -> torch.device:
        return next(iter(self.origin.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.origin.values())).dtype


def prepare(
    model: nn.Module,
    fns: Mapping,
    data,
    plane: Plane | None,
    settings: Settings,
    *,
    check: bool = True,
    recalibrate=None,
) -> tuple[Task, Settings]:
    """Move and cast the data, buffers and plane once, check the model (``check``), decide
    the batching and the sizes the settings leave open; return the task and the settings
    with those filled in. With settings already filled in (a Dask worker, a resumed run)
    the same call builds the same task without probing."""
    settle_allocator()
    device, dtype = settings.torch_device, settings.torch_dtype
    plane = plane.to(device, dtype) if plane is not None else None
    if plane is not None:
        origin = plane.origin
    else:
        origin = {n: cast(p.detach(), device, dtype) for n, p in model.named_parameters()}
    reference = next(iter(origin.values()))  # buffers in the weights' dtype (a float64 plane)
    buffers = {n: cast(b, reference.device, reference.dtype) for n, b in buffers_of(model).items()}
    if not isinstance(data, Data):
        data = load(data, settings.data_budget, settings.stream)
    given = {t.dtype for t in data.first.parts() if t.is_floating_point()}
    data = data.to(reference.device, reference.dtype)  # float data in the weights' dtype
    data_cast = None
    if given - {reference.dtype}:
        data_cast = f"{min(given, key=str)} -> {reference.dtype}".replace("torch.", "")
    objective = Objective(model, fns)
    first = data.first
    if check:
        probes.check_deterministic(model, origin, buffers, objective, first)
        objective.check(probes.functional(model, origin, buffers), first)
    batching = settings.batching
    if batching == "auto":
        keep = settings.batch_size is None and probes.depends_on_batch(
            model, origin, buffers, objective, first
        )
        batching = "user" if keep else "rebatch"
    sizes = {"batch_size": settings.batch_size, "points_per_call": settings.points_per_call}
    if None in sizes.values():
        sizes = _sizes(model, origin, buffers, objective, data, settings, batching)
    data = data.rebatched(sizes["batch_size"] if batching == "rebatch" else None)
    kernels = Kernels(plane, settings.max_memory // CACHE_SHARE)
    recalibration = None
    if recalibrate is not None:
        batches = Data(inputs_only(recalibrate)).to(reference.device, reference.dtype)
        recalibration = Recalibration(model, [b.inputs() for b in batches])
    task = Task(model, objective, data, buffers, plane, origin, kernels, data_cast, recalibration)
    task.precision_name = check_precision(settings.precision, reference.device)
    resolved = settings.replace(
        batching=batching,
        device=str(reference.device),
        dtype=str(reference.dtype).removeprefix("torch."),
        batch_size=sizes["batch_size"] if batching == "rebatch" else None,
        points_per_call=sizes["points_per_call"],
    )
    return task, resolved


def check_precision(precision: str | None, device: torch.device) -> str | None:
    if precision == "tf32" and device.type != "cuda":
        raise CrumpleError(
            f"precision='tf32' changes CUDA matmuls, and this run computes on {device}; leave "
            "precision out, or use 'bf16' (bfloat16 autocast, on the CPU too)"
        )
    return precision


@contextlib.contextmanager
def arithmetic(precision: str | None, device: torch.device):
    """bfloat16 autocast (``"bf16"``) or TF32 matmuls and convolutions (``"tf32"``) inside."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32":
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    else:
        yield


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (``None`` elsewhere)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free


def _sizes(model, origin, buffers, objective, data, settings, batching) -> dict[str, int]:
    """Batches whose activations stay cache-sized and within the memory budget (on a GPU,
    also within GPU_SHARE of its free memory), and as many points per call as keep theirs
    so too."""
    first = data.first
    probe = first.rows(slice(0, probes.PROBE_SAMPLES))
    activations = probes.activations_per_sample(model, origin, buffers, objective, probe)
    element = next(iter(origin.values())).element_size()
    budget = settings.max_memory - settings.max_memory // CACHE_SHARE
    free = free_memory(next(iter(origin.values())).device)
    working = WORKING_SET
    if free is not None:  # a GPU: sized from its free memory, not for a CPU cache
        budget = min(budget, int(free * GPU_SHARE))
        working = budget // element
    batch_size = settings.batch_size or max(
        1, min(working // activations, budget // (3 * activations * element))
    )
    if batching == "rebatch":
        largest = batch_size if data.streamed else min(batch_size, data.n_samples)
    else:
        largest = first.size if data.streamed else max(b.size for b in data.held)
    numel = sum(t.numel() for t in origin.values())
    point_bytes = element * (3 * activations * largest + numel)
    points_per_call = settings.points_per_call or max(
        1, min(working // (activations * largest), budget // point_bytes)
    )
    return {"batch_size": batch_size, "points_per_call": points_per_call}


class Evaluator:
    """Evaluates blocks of points with one strategy (chosen on the first call when the
    settings say ``"auto"``).

    Example:
        >>> import crumple as cr
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> plane = cr.Plane.axes(net, "weight")
        >>> x = torch.ones(4, 1)
        >>> evaluate = build(net, {"loss": torch.nn.functional.mse_loss}, (x, x), plane)
        >>> evaluate(Points.grid(plane, [torch.tensor([0.0, 2.0])]))["loss"].tolist()
        [1.0, 1.0]
    """

    def __init__(self, task: Task, settings: Settings, extras: Sequence[Extra] = ()) -> None:
        self.task, self.settings = task, settings
        self.extras = [
            (extra, extra.bind(task, settings)) for extra in extras
        ]  # per-point quantities
        self.choice: Choice | None = None
        self.strategy: Strategy | None = None
        self._trial: dict[str, Strategy] = {}  # strategies the auto choice made
        self.halvings = 0  # points per call halved after running out of memory
        if settings.strategy != "auto":
            self.strategy = STRATEGIES[settings.strategy](task)

    @property
    def names(self) -> list[str]:
        """The values each call gives: the functions', then the extras'."""
        return [*self.task.fns, *(name for extra, _ in self.extras for name in extra.names)]

    def facts(self) -> dict[str, object]:
        """What ``ds.attrs`` says about the data and the extras."""
        facts = self.task.facts()
        for _, bound in self.extras:
            facts |= bound.facts()
        return facts

    def __call__(
        self, points: Points, first_block: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Values at every point of ``points`` (float64, on the CPU). Blocks of more than
        ``points_per_call`` points are split (for strategies that take points together);
        ``first_block`` gives the first block's values, already computed."""
        values = self._values(points, first_block)
        for _, bound in self.extras:
            values |= bound(points)
        return values

    def _values(
        self, points: Points, first_block: Mapping[str, Tensor] | None
    ) -> dict[str, Tensor]:
        per_call = self.settings.points_per_call or points.size
        batched = self.strategy is None or self.strategy.batched
        if first_block is None and (not batched or points.size <= per_call):
            return self._call(points)
        out: dict[str, Tensor] = {}
        for n, block in enumerate(blocks(points.shape, per_call)):
            known = n == 0 and first_block is not None
            values = first_block if known else self._call(points.take(block))
            for name, v in values.items():
                if name not in out:
                    out[name] = torch.empty(points.shape, dtype=torch.float64)
                out[name][block] = v
        return out

    def _call(self, points: Points) -> dict[str, Tensor]:
        try:
            with self.task.precision():
                if self.strategy is None:
                    self.choice, values = choose(self.task, points, self._with)
                    self._use(self.choice.strategy)
                    if values is not None:
                        return values
                return self.strategy(points)
        except CrumpleError:
            raise
        except torch.OutOfMemoryError:
            if points.size == 1 or (self.strategy is not None and not self.strategy.batched):
                raise
            return self._halved(points)
        except Exception as e:
            if self.strategy is None or self.strategy.name != "vmap":
                raise
            warnings.warn(
                f"torch.func.vmap cannot evaluate this model ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); crumple falls back to evaluating one "
                "point at a time, which gives the same numbers more slowly",
                stacklevel=4,
            )
            self._use("loop")
            return self._call(points)

    def _halved(self, points: Points) -> dict[str, Tensor]:
        """After running out of memory: half the points per call from now on, this block
        in halves (said once per halving, and in ``halvings``)."""
        per_call = max(1, points.size // 2)
        if per_call < (self.settings.points_per_call or points.size):  # a block made before
            self.settings = self.settings.replace(points_per_call=per_call)
            self.halvings += 1
            warnings.warn(
                f"crumple: out of memory with {points.size} points at once; going on with "
                f"{per_call} points per call",
                stacklevel=4,
            )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self._values(points, None)

    def _with(self, name: str, points: Points) -> dict[str, Tensor]:
        """Evaluate with the named strategy (made once), for the ``auto`` choice."""
        if name not in self._trial:
            self._trial[name] = STRATEGIES[name](self.task)
        return self._trial[name](points)

    def with_buffers(self, buffers: Params) -> Evaluator:
        """An evaluator of the same prepared task (data, settings, strategy) whose points
        use ``buffers`` (e.g. a recorded snapshot's own BatchNorm statistics) in place of
        the model's of the same names.

        Example:
            >>> import crumple as cr
            >>> net = torch.nn.BatchNorm1d(1, eps=0.0).double().eval()
            >>> x = torch.ones(2, 1, dtype=torch.float64)
            >>> evaluate = build(net, {"loss": torch.nn.functional.l1_loss}, (x, 0 * x), None)
            >>> own = evaluate.with_buffers({"running_mean": torch.ones(1)})
            >>> weights = Points.weights({n: p[None] for n, p in net.named_parameters()})
            >>> evaluate(weights)["loss"].tolist(), own(weights)["loss"].tolist()
            ([1.0], [0.0])
        """
        task = self.task
        given = {n: cast(b, task.device, task.dtype) for n, b in buffers.items()}
        unknown = sorted(set(given) - set(task.buffers))
        if unknown:
            raise CrumpleError(
                f"the buffers {unknown[:8]} are not the model's (it has {sorted(task.buffers)[:8]}"
                "); evaluate a snapshot with the model it was recorded from"
            )
        return Evaluator(
            dataclasses.replace(task, buffers={**task.buffers, **given}), self.settings
        )

    def _use(self, name: str) -> None:
        self.strategy = self._trial.get(name) or STRATEGIES[name](self.task)
        self.settings = self.settings.replace(strategy=name)
        self._trial.clear()


def build(
    model: nn.Module,
    fns: Mapping,
    data,
    plane: Plane | None,
    settings: Settings | None = None,
    *,
    check: bool = True,
    recalibrate=None,
    extras: Sequence[Extra] = (),
) -> Evaluator:
    """The one factory of evaluators, for ``surface``, ``line``, ``project`` and Dask
    workers: ``prepare`` then an :class:`Evaluator` with the filled-in settings, computing
    the ``extras`` (:mod:`crumple.evaluation.extras`) beside the functions."""
    settings = settings or Settings()
    if recalibrate is not None and settings.strategy == "expanded":
        raise CrumpleError(
            "strategy='expanded' cannot recalibrate BatchNorm statistics (it leaves some "
            "weights uncombined); use strategy='auto', 'loop' or 'vmap'"
        )
    task, resolved = prepare(
        model, fns, data, plane, settings, check=check, recalibrate=recalibrate
    )
    return Evaluator(task, resolved, extras)
