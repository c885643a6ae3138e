"""The two speed runs' networks, written from their sources' descriptions (README "Speed presets").

- `SpeedResNet` (model=speedrun): the CIFAR-100 speedrun's ResNet (github.com/CerovazS/
  Cifar100Speedrun, `SimpleResNet`): a 3x3 stem, three stages of two post-activation basic
  blocks at widths 64/128/256 (stride 2 at the start of stages 2 and 3, a 1x1 projection where
  the shape changes), global average pooling and a bias-free linear head. 2,800,704 parameters
  for 100 classes (15 convs 2,770,624; 15 BatchNorms 4,480; the head 25,600).
- `AirbenchNet` (model=airbench): airbench94's net (github.com/KellerJordan/cifar10-airbench,
  legacy/airbench94.py): a frozen 2x2 whitening conv (24 channels, 12 filters from the training
  images' patch covariance and their negatives) with a trained bias, GELU, three conv groups
  (conv-maxpool-BN-GELU-conv-BN-GELU) of 64/256/256 channels, a 3x3 max-pool, a bias-free linear
  head whose logits are scaled by 1/9. BatchNorm with eps 1e-12, torch momentum 0.4 (the
  source's 0.6 is the running statistics' share), its weight frozen at 1. 1,972,792 parameters for
  10 classes, 1,971,352 of them trained (the whitening weight and the BatchNorm weights are not).

`width` scales both (the first stage's channels), as every model here, for size=smoke.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from experiments.models.checks import check_width


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut (identity, or 1x1 conv + BN), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(c_in, c_out, 3, stride), nn.ReLU(inplace=True),
                                  _conv_bn(c_out, c_out, 3, 1))
        same = c_in == c_out and stride == 1
        self.shortcut = nn.Identity() if same else _conv_bn(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class SpeedResNet(nn.Module):
    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 64,
                 blocks: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        check_width(width)
        widths = [width * 2 ** i for i in range(len(blocks))]  # 64, 128, 256
        layers: list[nn.Module] = [_conv_bn(in_chans, width, 3, 1), nn.ReLU(inplace=True)]
        c_in = width
        for i, (c_out, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c_out, 2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# --- airbench94 ---------------------------------------------------------------------------

WHITEN_KERNEL = 2  # px: the whitening conv's patches
WHITEN_EPS = 5e-4  # added to each eigenvalue before the filter is divided by its square root
WHITEN_IMAGES = 5000  # the first training images the patch covariance is computed from


class FrozenWeightBatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: the scale stays 1 (not trained), the shift is trained."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


def _dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 conv whose first c_in filters start as the identity (the source's init)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


class ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(_dirac_conv(c_in, c_out), nn.MaxPool2d(2), FrozenWeightBatchNorm(c_out),
                         nn.GELU(), _dirac_conv(c_out, c_out), FrozenWeightBatchNorm(c_out),
                         nn.GELU())


class AirbenchNet(nn.Module):
    """`init_from_data(images)` sets the whitening filters (the job calls it with the first
    `init_images` training images, normalized, before training); until then they are random."""

    init_images = WHITEN_IMAGES

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 64,
                 logit_scale: float = 1 / 9):
        super().__init__()
        check_width(width)
        whiten_channels = 2 * in_chans * WHITEN_KERNEL ** 2  # 24: 12 filters and their negatives
        self.whiten = nn.Conv2d(in_chans, whiten_channels, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        widths = (width, 4 * width, 4 * width)  # 64, 256, 256
        self.groups = nn.Sequential(*(ConvGroup(a, b) for a, b in
                                      zip((whiten_channels, *widths[:-1]), widths)))
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Whitening filters from the uncentred covariance of every 2x2 patch of `images`
        (normalized, N x C x H x W; the first WHITEN_IMAGES are used): each eigenvector, divided
        by sqrt(eigenvalue + WHITEN_EPS), and its negative."""
        images = images[:WHITEN_IMAGES].float()
        c, k = images.shape[1], WHITEN_KERNEL
        patches = images.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]).view(-1, c, k, k)
        weight = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(F.gelu(self.whiten(x)))
        x = F.max_pool2d(x, x.shape[-1]).flatten(1)  # 3x3 at 32 px: the source's MaxPool2d(3)
        return self.head(x) * self.logit_scale
