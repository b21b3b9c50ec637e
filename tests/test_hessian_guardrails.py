"""The Hessian honest on BatchNorm and with the surface's guardrails (issue 21, items 1
and 7): every entry point evaluates a BatchNorm model in eval mode (its eigenvalues those of
the dense eval-mode Hessian, by torch.autograd.functional.hessian) and leaves its bits and
flags as they were; a model whose loss is noisy, not finite, or partly detached is refused
with what to fix; a zero Hessian is answered with zeros."""

import copy
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

import crumple as cr
from crumple.cli import main
from crumple.errors import CrumpleError
from tests.cases import assert_close, assert_untouched, digits, snapshot

SAMPLES = 48


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def bn_cnn():
    """A float64 CNN with BatchNorm whose running statistics are its own, in train mode (as
    a factory builds it, and as a training loop leaves it)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, momentum=0.5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 10),
    ).double()  # fmt: skip
    x, _ = digits(SAMPLES)
    with torch.no_grad():
        for _ in range(3):
            net(x)
    return net


def bn_digits():
    """48 digits in two uneven batches (the mean weighs them)."""
    x, y = digits(SAMPLES)
    return [(x[:20], y[:20]), (x[20:], y[20:])]


def dense_eval_eigenvalues(model: nn.Module) -> np.ndarray:
    """All eigenvalues, descending, of the mean loss's Hessian over the flat weights, from
    torch.autograd.functional.hessian on a copy of the model in eval mode."""
    work = copy.deepcopy(model).eval()
    x, y = digits(SAMPLES)
    names = [n for n, _ in work.named_parameters()]
    shapes = [p.shape for p in work.parameters()]
    buffers = dict(work.named_buffers())

    def loss(flat):
        params = dict(zip(names, (t.view(s) for t, s in zip(flat.split(_sizes(shapes)), shapes))))
        return F.cross_entropy(functional_call(work, (params, buffers), (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in work.parameters()])
    matrix = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    return torch.linalg.eigvalsh(matrix).flip(0).numpy()


def _sizes(shapes):
    return [int(np.prod(s)) for s in shapes]


@pytest.fixture(scope="module")
def expected():
    return dense_eval_eigenvalues(bn_cnn())


def _eigen(model, data):
    return cr.hessian.eigen(model, F.cross_entropy, data, k=3).eigenvalues


def _lanczos(model, data):
    with pytest.MonkeyPatch.context() as patch:  # the whole model by Lanczos, not densely
        patch.setattr(cr.hessian.spectrum, "DENSE_SIZE", 0)
        return cr.hessian.eigen(model, F.cross_entropy, data, k=3).eigenvalues


def _operator(model, data):
    H = cr.hessian.Hessian(model, F.cross_entropy, data)
    return cr.hessian.eigen(H, k=3).eigenvalues


def _plane(model, data):
    return cr.Plane.hessian(model, F.cross_entropy, data).attrs["eigenvalues"]


def _curvature_map(model, data):
    plane = cr.Plane.random(model, seed=0)
    ds = cr.surface(model, F.cross_entropy, data, plane, cr.Grid([0.0], [0.0]), curvature=True)
    return [float(ds.lambda_max[0, 0])]


def _trace(model, data):
    cr.hessian.trace(model, F.cross_entropy, data, probes=2)
    cr.hessian.density(model, F.cross_entropy, data, probes=1, steps=5)


def _sharpness(model, data):
    cr.hessian.sharpness(model, F.cross_entropy, data, probes=2)


ENTRY_POINTS = {
    "eigen": _eigen,
    "eigen by Lanczos": _lanczos,
    "operator first": _operator,
    "Plane.hessian": _plane,
    "curvature map": _curvature_map,
    "trace and density": _trace,
    "sharpness": _sharpness,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_every_entry_point_uses_eval_mode_and_leaves_the_model_as_it_was(entry, expected):
    model = bn_cnn()
    assert model.training  # train mode when passed
    model[0].weight.requires_grad_(True)
    model[5].bias.requires_grad_(True)
    before = snapshot(model)
    found = ENTRY_POINTS[entry](model, bn_digits())
    assert_untouched(model, before)  # parameters, buffers, training and requires_grad
    if found is not None:
        assert_close(found, expected[: len(found)], 1e-8, entry)


def test_a_second_call_gives_the_same_eigenvalues():
    model, data = bn_cnn(), bn_digits()
    first, second = _eigen(model, data), _eigen(model, data)
    assert_close(second, first, 1e-12, "a second call")  # the statistics did not drift


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The BatchNorm CNN's state dict (its running statistics with it), in a file."""
    file = tmp_path_factory.mktemp("weights") / "net.safetensors"
    save_file(bn_cnn().state_dict(), str(file))
    return file


MODEL = ["--model", "tests.test_hessian_guardrails:bn_cnn"]
DATA = ["--data", "tests.test_hessian_guardrails:bn_digits"]


def test_crumple_hessian_on_a_batchnorm_model_is_the_eval_mode_hessian(
    weights_file, expected, tmp_path, capsys
):
    digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    out = tmp_path / "run"
    main(["hessian", *MODEL, *DATA, "--weights", str(weights_file), "--top", "3"]
         + ["--dtype", "float64", "--out", str(out)])  # fmt: skip
    ds = cr.store.open_hessian(out)
    assert_close(ds.eigenvalues.sel(rank=[0, 1, 2]), expected[:3], 1e-8, "crumple hessian")
    assert hashlib.sha256(weights_file.read_bytes()).hexdigest() == digest
    said = "eval mode, the running statistics of its 1 layer(s)"
    assert ds.attrs["batchnorm"] == said and f"BatchNorm: {said}" in capsys.readouterr().out
    assert f"<b>{said}</b>" in (out / "hessian.html").read_text()  # the page's facts


def test_crumple_surface_plane_hessian_is_centred_on_the_eval_mode_loss(
    weights_file, tmp_path, capsys
):
    out = tmp_path / "surface"
    inputs = [*MODEL, *DATA, "--weights", str(weights_file), "--dtype", "float64"]
    main(["surface", *inputs, "--plane", "hessian", "--grid", "-1:1:3", "--out", str(out)])
    main(["hessian", *inputs, "--top", "1", "--out", str(out)])  # beside the surface
    main(["info", str(out)])
    said = "hessian BatchNorm: eval mode, the running statistics of its 1 layer(s)"
    assert said in capsys.readouterr().out
    ds = cr.open_run(out)["surface"]
    model = bn_cnn().eval()
    model.load_state_dict(load_file(str(weights_file)))
    x, y = digits(SAMPLES)
    with torch.no_grad():
        centre = float(F.cross_entropy(model(x), y))
    assert float(ds.loss.sel(alpha=0.0, beta=0.0)) == pytest.approx(centre, rel=1e-12)


class AlwaysNoisy(nn.Module):
    """Noise that ignores eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10).double()

    def forward(self, x):
        return self.linear(x.flatten(1) + 0.1 * torch.randn_like(x.flatten(1)))


class Float32Inside(nn.Module):
    """A model that cannot run in float64 (a float32 matrix of its own)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 10)
        self.register_buffer("mix", torch.eye(64), persistent=False)

    def forward(self, x):
        return self.linear(x.flatten(1).float() @ self.mix.float())


def linear_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double()


def partly_detached(pred, y):
    return F.cross_entropy(pred, y) + (pred.detach() * pred).mean()


def slightly_detached(pred, y):
    return F.cross_entropy(pred, y) + 0.01 * (pred.detach() * pred).mean()


def log_of_output(pred, y):
    return -torch.log(pred).mean()  # nan where an output is negative


def with_nan_sample():
    x, y = digits(96)
    x = x.clone()
    x[25, 0, 3, 3] = float("nan")  # batch 1, sample 5
    return [(x[:20], y[:20]), (x[20:], y[20:])]


def nan_weights():
    net = linear_net()
    with torch.no_grad():
        net[3].weight[2, 1] = float("inf")
    return net


REFUSED = {
    "noise that ignores eval mode": (
        AlwaysNoisy, F.cross_entropy, bn_digits, "changes between two passes"
    ),
    "one nan in the data": (linear_net, F.cross_entropy, with_nan_sample, "sample 5"),
    "a partly detached loss": (linear_net, partly_detached, bn_digits, "not its own"),
    "a slightly detached loss": (linear_net, slightly_detached, bn_digits, "not its own"),
    "a detached loss in float32": (
        lambda: linear_net().float(), partly_detached, bn_digits, "not its own"
    ),
    "a detached loss that float64 cannot check": (
        Float32Inside, partly_detached, bn_digits, r"not its own.*in float32"
    ),
    "a loss that is nan at the weights": (
        linear_net, log_of_output, bn_digits, r"mean loss is nan \(first on batch 0"
    ),
    "weights with inf": (nan_weights, F.cross_entropy, bn_digits, "parameter '3.weight'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_model_the_hessian_cannot_trust_is_refused(case):
    make_model, loss_fn, make_data, message = REFUSED[case]
    model = make_model()
    before = snapshot(model)
    for call in (
        lambda: cr.hessian.Hessian(model, loss_fn, make_data()),
        lambda: cr.hessian.eigen(model, loss_fn, make_data(), k=1),
        lambda: cr.Plane.hessian(model, loss_fn, make_data()),
    ):
        with pytest.raises(CrumpleError, match=message):
            call()
    assert_untouched(model, before)


class RoundsInside(nn.Module):
    """A float64 model that normalises in float32 inside (as LLaMA's RMSNorm does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.last = nn.Linear(64, 16).double(), nn.Linear(16, 10).double()

    def forward(self, x):
        h = self.first(x.flatten(1)).float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return self.last(F.silu(h.double()))


HONEST = {
    "float32 CNN with BatchNorm and ReLU": lambda: bn_cnn().float(),
    "float64 CNN with BatchNorm and ReLU": bn_cnn,
    "a float64 model that rounds to float32 inside": RoundsInside,
    "float32 MLP": lambda: linear_net().float(),
    "a model that runs in float32 only": Float32Inside,
}


@pytest.mark.parametrize("case", list(HONEST))
def test_honest_models_pass_the_gradient_check(case):
    model = HONEST[case]()
    x, y = digits(SAMPLES, dtype=next(model.parameters()).dtype)
    H = cr.hessian.Hessian(model, F.cross_entropy, [(x[:20], y[:20]), (x[20:], y[20:])])
    assert np.isfinite(cr.hessian.eigen(H, k=1).eigenvalues).all()


def zero_case():
    """A linear model and a loss linear in its 301 weights: the Hessian is zero (and
    more than 256 parameters take Lanczos, not the dense solver)."""
    torch.manual_seed(0)
    net = nn.Linear(300, 1).double()
    x = torch.randn(50, 300, dtype=torch.float64)
    return net, (lambda pred, y: pred.mean()), (x, torch.zeros(50, 1, dtype=torch.float64))


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_a_zero_hessian_has_eigenvalues_zero(which):
    net, loss_fn, data = zero_case()
    found = cr.hessian.eigen(net, loss_fn, data, k=2, which=which)
    count = 2 * (1 + (which == "both"))
    assert found.eigenvalues.tolist() == [0.0] * count
    vectors = torch.stack(
        [torch.cat([v["weight"].reshape(-1), v["bias"]]) for v in found.eigenvectors]
    )
    assert torch.allclose(vectors @ vectors.T, torch.eye(count, dtype=vectors.dtype))
    assert (found.residuals == 0).all()


def test_a_zero_hessian_has_sharpness_and_a_plane():
    net, loss_fn, data = zero_case()
    assert cr.hessian.sharpness(net, loss_fn, data, probes=2).eigenvalue == 0.0
    assert cr.Plane.hessian(net, loss_fn, data).attrs["eigenvalues"] == [0.0, 0.0]
