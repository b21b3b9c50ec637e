import pytest
import torch

from tests import cases


@pytest.fixture(scope="session")
def seed_data():
    return cases.seed_data()


@pytest.fixture(scope="session")
def seed_data64(seed_data):
    """The test split in float64."""
    _, (x, y) = seed_data
    return x.double(), y.double()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
