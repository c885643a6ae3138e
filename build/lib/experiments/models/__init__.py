"""Models, each built by the `model` config group's `_target_`."""

from experiments.models.preact import PreActResNet18
from experiments.models.resnet import timm_model, timm_resnet18
from experiments.models.small import MLP, LeNet

__all__ = ["LeNet", "MLP", "PreActResNet18", "timm_model", "timm_resnet18"]
