"""Small models for MNIST-sized data: an MLP and LeNet-5."""

import torch
import torch.nn as nn


class MLP(nn.Module):
    """Flattens its input, so it takes any image size (no silent shape mismatch)."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 28,
                 hidden: tuple[int, ...] = (512, 256), dropout: float = 0.0):
        super().__init__()
        sizes = [in_chans * image_size * image_size, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(sizes[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5 (ReLU and max-pooling): 28x28 inputs are padded to the 32x32 it was built for."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 28):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2 if image_size < 32 else 0), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
        with torch.no_grad():  # the flattened size for this image size
            flat = self.features(torch.zeros(1, in_chans, image_size, image_size)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
