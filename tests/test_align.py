"""cr.align (weight matching): the aligned model computes the same function as the one it
came from (float64, 1e-10) on an MLP, a CNN with BatchNorm and a small ResNet; a known
shuffle of hidden units is undone exactly; what cannot be permuted is refused by name."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crumple as cr
from crumple.alignment import permutation_axes
from crumple.errors import CrumpleError
from tests.cases import MLP, digits


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 10)
        )

    def forward(self, x):
        return self.head(self.features(x.reshape(-1, 1, 8, 8)))


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout)
        self.short = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(Block(4, 4), Block(4, 8), Block(8, 8))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x.reshape(-1, 1, 8, 8))))
        return self.fc(torch.flatten(self.pool(self.blocks(x)), 1))


def trained(make, seed, data, steps=15):
    torch.manual_seed(seed)
    net = make().double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):  # train mode: BatchNorm statistics move
        opt.zero_grad()
        F.cross_entropy(net(data[0]), data[1]).backward()
        opt.step()
    return net.eval()


def distance(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sum(
        float((sa[k] - sb[k]).double().pow(2).sum()) for k in sa if sa[k].is_floating_point()
    )


MODELS = [MLP, CNN, ResNet]
IDS = ["mlp", "cnn-batchnorm", "resnet"]


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_the_aligned_model_computes_the_same_function(make, method):
    data = digits(128)
    a, b = trained(make, 1, data), trained(make, 2, data)
    before = copy.deepcopy(b.state_dict())
    aligned = cr.align(a, b, method, data=data if method == "activations" else None)
    with torch.no_grad():
        same = (aligned(data[0]) - b(data[0])).abs().max()
    assert float(same) < 1e-10, float(same)
    assert distance(a, aligned) < distance(a, b)  # closer to a than b was
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())  # b untouched
    assert any(not torch.equal(before[k], v) for k, v in aligned.state_dict().items())


@pytest.mark.parametrize("method", ["weights", "activations"])
@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_a_known_shuffle_of_hidden_units_is_undone(make, method):
    data = digits(64)
    a = trained(make, 3, data, steps=3)
    axes = permutation_axes(a)
    generator = torch.Generator().manual_seed(0)
    shuffles = {g: torch.randperm(n, generator=generator) for g, n in axes.sizes.items()}
    from crumple.alignment import permuted

    b = copy.deepcopy(a)
    b.load_state_dict(permuted(a.state_dict(), axes, shuffles))
    with torch.no_grad():
        assert float((b(data[0]) - a(data[0])).abs().max()) < 1e-10  # the same function
    aligned = cr.align(a, b, method, data=data if method == "activations" else None)
    differ = [k for k, v in aligned.state_dict().items() if not torch.equal(v, a.state_dict()[k])]
    assert not differ, f"not undone: {differ}"


def test_what_cannot_be_permuted_is_refused_by_name():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.one, self.two, self.out = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.out(torch.cat([self.one(x), self.two(x)], 1))

    with pytest.raises(CrumpleError, match="cat"):
        cr.align(Cat(), Cat())
    with pytest.raises(CrumpleError, match="LSTM"):
        lstm = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4))
        cr.align(lstm, copy.deepcopy(lstm))
    with pytest.raises(CrumpleError, match="different parameters"):
        cr.align(MLP(), CNN())
    with pytest.raises(CrumpleError, match="method must be 'weights'"):
        cr.align(MLP(), MLP(), method="hungarian")
    with pytest.raises(CrumpleError, match="on data="):
        cr.align(MLP(), MLP(), method="activations")
