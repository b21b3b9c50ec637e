"""The private torch APIs the layer kernels rely on (listed at the top of
crumple/evaluation/kernels.py): each test fails loudly, naming the API, when one changes."""

import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.overrides import TorchFunctionMode

from crumple.evaluation import kernels


def test_is_batchedtensor_tells_vmapped_tensors_from_plain_ones():
    from torch._C._functorch import is_batchedtensor

    seen = []
    vmap(lambda t: seen.append(is_batchedtensor(t)) or t)(torch.zeros(3, 2))
    assert seen == [True], "torch._C._functorch.is_batchedtensor no longer marks vmapped tensors"
    assert not is_batchedtensor(torch.zeros(2)), "is_batchedtensor marks a plain tensor"


def test_torch_function_mode_sees_linear_and_convolutions_as_the_functionals():
    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Spy():
        torch.nn.Linear(3, 2)(torch.zeros(1, 3))
        torch.nn.Conv1d(1, 1, 2)(torch.zeros(1, 1, 4))
        torch.nn.Conv2d(1, 1, 2)(torch.zeros(1, 1, 4, 4))
        torch.nn.Conv3d(1, 1, 2)(torch.zeros(1, 1, 4, 4, 4))
    missing = [f.__name__ for f in kernels.LINEAR_IN_WEIGHTS if f not in seen]
    assert not missing, f"TorchFunctionMode no longer dispatches {missing} as the functional"


def test_views_of_the_input_share_its_storage_pointer():
    x = torch.zeros(4, 2, 3)
    for view in (x.flatten(1), x.view(4, 6), x[:, 0], x.reshape(4, -1)):
        assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert F.relu(x).untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
