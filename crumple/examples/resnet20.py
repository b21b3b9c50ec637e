"""ResNet-20 for 32 x 32 images, as in He et al. 2016 (section 4.2, CIFAR-10).

A 3x3 convolution of 16 channels, then three stages of three basic blocks (two 3x3
convolutions with BatchNorm each) at 16, 32 and 64 channels, the second and third stage
starting with stride 2, then global average pooling and a linear head: 6 * 3 + 2 = 20
layers with weights. Shortcuts are option A of the paper: the identity, and where a stage
halves the resolution and doubles the channels, the input taken at every other pixel with
zero channels padded on (no parameters). 269,722 parameters for 10 classes.

Used by ``benchmarks/gpu.py``; nothing is downloaded and nothing is trained here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crumple.examples.zoo import BasicBlock


class _PadShortcut(nn.Module):
    """Option A: every other pixel, and ``extra`` zero channels split around the input's."""

    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class ResNet20(nn.Module):
    """The network of :func:`resnet20`; ``stage1`` to ``stage3`` hold its blocks."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.conv = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        stages, c_in = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            first = BasicBlock(c_in, width, stride, _PadShortcut(width - c_in))
            blocks = [first] + [BasicBlock(width, width) for _ in "12"]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stage1, self.stage2, self.stage3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.conv(x)))
        h = self.stage3(self.stage2(self.stage1(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def resnet20(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A randomly initialised ResNet-20 for 3 x 32 x 32 inputs (CIFAR-10's shape).

    Convolutions and the head are drawn with Kaiming-normal initialisation (He et al. 2015,
    fan-in), BatchNorm starts at weight 1, bias 0 and running statistics 0 and 1. The
    caller's global random state is left as it was.

    Args:
        num_classes: outputs of the linear head.
        seed: seed of the initialisation; the same seed gives the same weights.

    Returns:
        The model, in training mode as any new module (crumple evaluates in eval mode).

    Example:
        >>> import torch
        >>> model = resnet20(seed=0)
        >>> sum(p.numel() for p in model.parameters())
        269722
        >>> model.eval()(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNet20(num_classes)
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
    return model
