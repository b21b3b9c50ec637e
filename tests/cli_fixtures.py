"""Factories and loaders that the command-line tests name as ``tests.cli_fixtures:...``."""

import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.cases import MLP, digits


def make_mlp():
    torch.manual_seed(0)
    return MLP()


def not_a_model():
    return "a string"


def digits_loader():
    x, y = digits(200, dtype=torch.float32)
    return DataLoader(TensorDataset(x, y), batch_size=64)


def wrong_shapes():
    x, y = digits(50, dtype=torch.float32)
    return x[:, :, :4], y


def slow_cross_entropy(pred, y):
    """Cross-entropy that takes a while, so that a run can be stopped part-way."""
    import time

    time.sleep(0.01)
    return torch.nn.functional.cross_entropy(pred, y)


def slower_cross_entropy(pred, y):
    """Cross-entropy that takes longer still (per call, whatever the batching)."""
    import time

    time.sleep(0.1)
    return torch.nn.functional.cross_entropy(pred, y)


def make_mlp64():
    """A float64 model, for float32 data."""
    return make_mlp().double()


def tiny_gpt2():
    from tests.test_hf import tiny_gpt2 as build

    return build()


def token_batches():
    from tests.test_hf import padded_batches

    return padded_batches()


def make_tiny64():
    """A float64 MLP of 310 parameters, whose Hessian takes seconds (crumple hessian)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.Tanh(), torch.nn.Linear(4, 10)
    ).double()


def digits_pair():
    """64 digits as one (x, y) pair of tensors."""
    return digits(64, dtype=torch.float64)


def make_cnn():
    """A CNN with BatchNorm, for --recalibrate."""
    from tests.cases import SmallCNN

    torch.manual_seed(0)
    return SmallCNN()


def digit_images():
    x, y = digits(200, dtype=torch.float32)
    return DataLoader(TensorDataset(x.reshape(-1, 1, 8, 8), y), batch_size=64)
