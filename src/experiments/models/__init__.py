"""Models, each built by the `model` config group's `_target_`."""

from experiments.models.preact import PreActResNet18
from experiments.models.resnet import timm_model, timm_resnet18
from experiments.models.small import MLP, LeNet
from experiments.models.speed import AirbenchNet, SpeedResNet

__all__ = ["AirbenchNet", "LeNet", "MLP", "PreActResNet18", "SpeedResNet", "timm_model",
           "timm_resnet18"]
