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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    Hessian-vector products of a tiny model are fastest on one thread, and much slower on two
    threads of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
