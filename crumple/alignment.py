"""``align``: a copy of a model with its hidden units permuted to match another model's
(weight matching, Ainsworth et al., Git Re-Basin, ICLR 2023), computing the same function.

Which axes a permutation moves is read from the model's graph (``torch.fx``): each
Linear or Conv layer's outputs are one group of units, carried unchanged through
activations, dropout, pooling and BatchNorm (whose affine weights and running statistics
move with the channels), spread over the features by a flatten, and shared by both
branches of a residual sum (one permutation for the whole residual stream). The network's
inputs and outputs are never permuted. Anything else in the graph is refused, naming it.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from crumple.errors import CrumpleError, CrumpleTypeError

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CARRIED = (  # modules through which each unit stays itself
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)  # fmt: skip
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FUNCTIONS = {torch.relu, torch.tanh, torch.sigmoid, nn.functional.relu, nn.functional.gelu,
             nn.functional.silu, nn.functional.dropout, torch.sigmoid}  # fmt: skip
SUMS = {operator.add, torch.add, operator.iadd}
SIZES = {"size", "dim"}  # methods that give numbers, not units
MOST_ROUNDS = 100  # rounds of weight matching over all groups


@dataclass
class Axes:
    """The groups of units of a model, and the parameter (or buffer) axes each moves:
    ``moved[group] = [(name, axis, repeat)]`` (``repeat``: features per unit after a
    flatten)."""

    sizes: dict[int, int] = field(default_factory=dict)
    moved: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)  # graph node -> the group of its units


def align(model_a: nn.Module, model_b: nn.Module, method: str = "weights", data=None) -> nn.Module:
    """A copy of ``model_b`` whose hidden units are permuted to match ``model_a``'s: the
    same function as ``model_b`` (up to rounding), its weights as close to ``model_a``'s as
    a permutation of units makes them (weight matching: for each group of units in turn,
    the assignment that maximises the sum of the products of the weights it touches,
    Hungarian algorithm, until no group changes). ``model_b`` is left as it was.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
        >>> b = copy.deepcopy(a)
        >>> with torch.no_grad():  # b: a with its hidden units shuffled
        ...     order = torch.tensor([2, 0, 3, 1])
        ...     _ = b[0].weight.copy_(a[0].weight[order]), b[0].bias.copy_(a[0].bias[order])
        ...     _ = b[2].weight.copy_(a[2].weight[:, order])
        >>> aligned = align(a, b)
        >>> torch.equal(aligned[0].weight, a[0].weight)  # the shuffle undone
        True
    """
    if method not in ("weights", "activations"):
        raise CrumpleError(
            f"method must be 'weights' (weight matching) or 'activations' (activation "
            f"matching on data=), got {method!r}"
        )
    if (method == "activations") != (data is not None):
        raise CrumpleError(
            "method='activations' matches the units' activations on data=...: give both, or "
            "neither (weight matching needs no data)"
        )
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise CrumpleTypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if {k: v.shape for k, v in state_a.items()} != {k: v.shape for k, v in state_b.items()}:
        raise CrumpleError(
            "model_a and model_b have different parameters (names or shapes): align two "
            "models of one architecture"
        )
    axes = permutation_axes(model_b)
    if method == "weights":
        perms = weight_matching(axes, state_a, state_b)
    else:
        perms = activation_matching(axes, model_a, model_b, data)
    aligned = copy.deepcopy(model_b)
    aligned.load_state_dict(permuted(state_b, axes, perms))
    return aligned


def permutation_axes(model: nn.Module) -> Axes:
    """The groups of hidden units of ``model`` and the axes each moves, from its
    ``torch.fx`` graph; what cannot be permuted safely is refused, naming it."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:
        raise CrumpleError(
            f"align reads the model's graph with torch.fx, which cannot trace it "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    modules = dict(model.named_modules())
    parent: dict[int, int | None] = {}  # union-find of groups; None is fixed

    def find(g):
        while g is not None and parent.get(g, g) != g:
            g = parent[g]
        return g

    def union(g, h):
        g, h = find(g), find(h)
        if g == h:
            return g
        if g is None or h is None:  # joined with the inputs or outputs: not permuted
            for x in (g, h):
                if x is not None:
                    parent[x] = None
            return None
        parent[h] = g
        return g

    axes, group_of, uses = Axes(), {}, []  # uses: (group, name, axis, repeat)
    for node in graph.nodes:
        group_of[node] = _group(node, modules, group_of, axes, uses, union, find)
    for node in graph.nodes:
        if node.op == "output":
            _fix_all(node.args, group_of, union)
    out = Axes()
    for g, name, axis, repeat in uses:
        root = find(g)
        if root is not None:
            out.sizes[root] = axes.sizes[g]
            out.moved.setdefault(root, []).append((name, axis, repeat))
    for node, g in group_of.items():
        if isinstance(g, int) and find(g) is not None:  # units as channels (not flattened)
            out.nodes[node.name] = find(g)
    return out


def _fix_all(arg, group_of, union) -> None:
    """Fix every group that reaches the model's output."""
    if isinstance(arg, torch.fx.Node):
        group = group_of.get(arg)
        union(group[1] if isinstance(group, tuple) else group, None)
    elif isinstance(arg, (tuple, list)):
        for a in arg:
            _fix_all(a, group_of, union)
    elif isinstance(arg, dict):
        for a in arg.values():
            _fix_all(a, group_of, union)


def _group(node, modules, group_of, axes: Axes, uses: list, union, find):
    """The group of units of ``node``'s output (None: not permuted), recording the axes a
    layer's or a norm's parameters move."""
    if node.op == "placeholder":
        return None
    inputs = list(node.all_input_nodes)  # nested ones too (a list given to cat)
    given = group_of.get(inputs[0]) if inputs else None
    if node.op == "call_module":
        module = modules[node.target]
        if not isinstance(module, LAYERS) and given is None:
            return None  # on the inputs alone: nothing to permute
        if isinstance(module, LAYERS):
            fresh = len(axes.sizes)
            axes.sizes[fresh] = module.out_channels if hasattr(module, "out_channels") else (
                module.out_features)  # fmt: skip
            repeat = _repeat(module, given, axes)
            source = given[1] if isinstance(given, tuple) else given  # units, flattened or not
            if source is not None:
                uses.append((source, f"{node.target}.weight", 1, repeat))
            uses.append((fresh, f"{node.target}.weight", 0, 1))
            if module.bias is not None:
                uses.append((fresh, f"{node.target}.bias", 0, 1))
            return fresh
        if isinstance(module, NORMS):
            if isinstance(given, tuple):
                raise CrumpleError(
                    f"align cannot permute the BatchNorm {node.target!r} after a flatten"
                )
            if given is not None:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(module, name, None) is not None:
                        uses.append((given, f"{node.target}.{name}", 0, 1))
            return given
        if isinstance(module, CARRIED):
            return given
        if isinstance(module, nn.Flatten):
            return ("flat", given) if given is not None else None
        raise CrumpleError(
            f"align cannot permute through the module {node.target!r} "
            f"({type(module).__name__}): it handles Linear and Conv layers, BatchNorm, "
            "activations, dropout, pooling, flatten and residual sums"
        )
    if node.op == "call_function" and node.target in SUMS:
        groups = [group_of.get(a) for a in inputs]
        return _unite(groups, union)
    if node.op == "call_function" and node.target in FUNCTIONS:
        return given
    if node.op == "call_function" and node.target is torch.flatten:
        return ("flat", given) if given is not None else None
    if node.op == "call_method" and node.target == "flatten":
        return ("flat", given) if given is not None else None
    if node.op in ("output", "get_attr") or node.op == "call_method" and node.target in SIZES:
        return None
    if all(group_of.get(a) is None for a in inputs):  # on the inputs alone: nothing to permute
        return None
    what = (
        node.target if node.op != "call_function" else getattr(node.target, "__name__", node.target)
    )
    raise CrumpleError(
        f"align cannot permute through {node.op} {what!r} (node {node.name!r}) of the model's "
        "graph: it handles Linear and Conv layers, BatchNorm, activations, dropout, pooling, "
        "flatten and residual sums"
    )


def _unite(groups, union):
    """One group for the branches of a residual sum."""
    if any(isinstance(g, tuple) for g in groups):
        raise CrumpleError("align cannot permute a residual sum of flattened features")
    root = groups[0]
    for g in groups[1:]:
        root = union(root, g)
    return root


def _repeat(module: nn.Module, given, axes: Axes) -> int:
    """Input features per unit of ``given``: 1, or the spatial size after a flatten."""
    if not isinstance(given, tuple):
        return 1
    channels = axes.sizes[given[1]]
    if module.in_features % channels:
        raise CrumpleError(
            f"align: {module.in_features} features do not split into {channels} channels"
        )
    return module.in_features // channels


def weight_matching(axes: Axes, state_a, state_b) -> dict[int, Tensor]:
    """For each group, the permutation of ``b``'s units that matches ``a``'s weights."""
    from scipy.optimize import linear_sum_assignment

    perms = {g: torch.arange(n) for g, n in axes.sizes.items()}
    for _ in range(MOST_ROUNDS):
        changed = False
        for g in axes.sizes:
            others = {h: p for h, p in perms.items() if h != g}
            cost = torch.zeros(axes.sizes[g], axes.sizes[g], dtype=torch.float64)
            for name, axis, repeat in axes.moved[g]:
                wb = _apply(state_b[name], name, axes, others)
                cost += _units(state_a[name], axis, repeat) @ _units(wb, axis, repeat).T
            _, order = linear_sum_assignment(cost.numpy(), maximize=True)
            order = torch.as_tensor(order)
            if not torch.equal(order, perms[g]):
                better = _score(cost, order) > _score(cost, perms[g]) + 1e-12 * cost.abs().max()
                if better:
                    perms[g], changed = order, True
        if not changed:
            break
    return perms


def _score(cost: Tensor, order: Tensor) -> float:
    return float(cost[torch.arange(len(order)), order].sum())


def _units(t: Tensor, axis: int, repeat: int) -> Tensor:
    """``t`` as one row per unit of ``axis`` (``repeat`` entries of the axis per unit)."""
    moved = t.detach().double().movedim(axis, 0)
    return moved.reshape(moved.shape[0] // repeat, -1)


def _apply(t: Tensor, name: str, axes: Axes, perms: dict[int, Tensor]) -> Tensor:
    """``t`` with the permutations ``perms`` of its groups applied along their axes."""
    for g, perm in perms.items():
        for moved_name, axis, repeat in axes.moved.get(g, []):
            if moved_name == name:
                index = (perm[:, None] * repeat + torch.arange(repeat)).reshape(-1)
                t = t.index_select(axis, index.to(t.device))
    return t


def permuted(state: dict, axes: Axes, perms: dict[int, Tensor]) -> dict:
    """``state`` (a state dict) with every group's permutation applied."""
    return {name: _apply(t, name, axes, perms) for name, t in state.items()}


def activation_matching(axes: Axes, model_a: nn.Module, model_b: nn.Module, data) -> dict:
    """For each group, the permutation of ``b``'s units whose activations on ``data``
    (every output in the graph that carries the group's units, in eval mode) best match
    ``a``'s: the assignment maximising the summed products of the two models' activations."""
    from scipy.optimize import linear_sum_assignment

    from crumple.batches import load
    from crumple.params import evaluation_mode

    cost = {g: torch.zeros(n, n, dtype=torch.float64) for g, n in axes.sizes.items()}
    graphs = [torch.fx.symbolic_trace(m) for m in (model_a, model_b)]
    with evaluation_mode(model_a), evaluation_mode(model_b):
        for batch in load(data):
            args, kwargs = batch.inputs(with_target=False)
            outs = [_recorded(gm, axes.nodes, args, kwargs) for gm in graphs]
            for name, g in axes.nodes.items():
                cost[g] += _channels(outs[0][name]).T @ _channels(outs[1][name])
    perms = {}
    for g, c in cost.items():
        _, order = linear_sum_assignment(c.numpy(), maximize=True)
        perms[g] = torch.as_tensor(order)
    return perms


def _recorded(gm: torch.fx.GraphModule, names, args, kwargs) -> dict[str, Tensor]:
    """The outputs of the graph's nodes ``names`` for one batch."""
    kept = {}

    class Recording(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.name in names:
                kept[node.name] = out
            return out

    Recording(gm).run(*args, *kwargs.values())
    return kept


def _channels(t: Tensor) -> Tensor:
    """An activation as rows of units: ``(samples x positions, units)``."""
    t = t.detach().double()
    return t.movedim(1, -1).reshape(-1, t.shape[1]) if t.dim() > 2 else t
