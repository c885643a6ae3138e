"""Small models for MNIST-sized data: an MLP and LeNet-5.

Like every model here, each takes `width`, its size knob: the first layer's units or channels,
later layers keeping the standard model's proportions; the default is the standard model.
"""

import torch
import torch.nn as nn


class MLP(nn.Module):
    """Flattens its input, so it takes any image size (no silent shape mismatch).

    `depth` hidden layers of `width`, `width / 2`, ... units (width 512, depth 2: 512-256), each
    Linear-BatchNorm-ReLU: without BatchNorm the default optimizer (SGD, lr 0.1, nesterov) made
    the 512-256 MLP diverge to NaN within 5 steps on 32x32x3 inputs (experiment=smoke)."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 28,
                 width: int = 512, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        sizes = [in_chans * image_size * image_size, *(max(1, width >> i) for i in range(depth))]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5 (ReLU and max-pooling): 28x28 inputs are padded to the 32x32 it was built for.

    `width` is the first conv's channels; 6 is LeNet-5 (6, 16 channels, then 120, 84 units),
    and every later layer scales with it."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 28, width: int = 6):
        super().__init__()
        conv2, fc1, fc2 = (max(1, round(n * width / 6)) for n in (16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 5, padding=2 if image_size < 32 else 0), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, conv2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad():  # the flattened size for this image size
            flat = self.features(torch.zeros(1, in_chans, image_size, image_size)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, fc1), nn.ReLU(inplace=True), nn.Linear(fc1, fc2), nn.ReLU(inplace=True),
            nn.Linear(fc2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
