"""Models, each built by the `model` config group's `_target_`."""

from experiments.models.preact import PreActResNet18
from experiments.models.resnet import timm_resnet18

__all__ = ["PreActResNet18", "timm_resnet18"]
