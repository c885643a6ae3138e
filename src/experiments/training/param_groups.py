"""Per-group learning rates for fine-tuning: the new classifier learns at `optim.lr`, the
pretrained backbone slower (`param_groups.backbone_lr_scale`), or every block slower the further
it is from the head (`param_groups.layer_decay`, timm's layer-wise decay, where timm's model
defines its layers). Or, for training from scratch (airbench94), the 1-D parameters (biases and
norms) at their own multiples of the lr and the weight decay (`param_groups.vector_lr_scale`,
`vector_weight_decay_scale`: airbench's BatchNorm biases learn at 64x the lr, with 1/64 the
decay, so that their lr x decay stays the other weights'). Groups carry timm's `lr_scale`;
`lr` is set from it here, so the schedules (torch's LambdaLR scales each group's own initial
lr) keep the ratios all the way.
"""

from __future__ import annotations

import torch.nn as nn
from timm.optim import param_groups_layer_decay

from experiments.errors import ConfigError


def classifier(model: nn.Module) -> nn.Module:
    """timm's classifier where the model has one, else the last linear layer."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("param_groups.backbone_lr_scale needs a classifier (a last nn.Linear); "
                          f"{type(model).__name__} has none")
    return linears[-1]


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0,
                 layer_decay: float | None = None, vector_lr_scale: float = 1.0,
                 vector_weight_decay_scale: float = 1.0) -> list:
    """What the optimizer is given: the parameters as they are (one group), or groups with
    their own `lr` (and timm's `lr_scale`)."""
    vectors = vector_lr_scale != 1.0 or vector_weight_decay_scale != 1.0
    if vectors and (layer_decay is not None or backbone_lr_scale != 1.0):
        raise ConfigError("param_groups: the vector_* scales (training from scratch) do not "
                          "combine with backbone_lr_scale or layer_decay (fine-tuning): set one kind")
    if vectors:
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1], "lr_scale": 1.0},
                  {"params": [p for p in params if p.ndim <= 1], "lr_scale": vector_lr_scale,
                   "weight_decay": weight_decay * vector_weight_decay_scale}]
    elif layer_decay is not None:
        if backbone_lr_scale != 1.0:
            raise ConfigError("param_groups: set layer_decay or backbone_lr_scale, not both "
                              "(layer-wise decay already lowers the backbone's rates)")
        if not hasattr(model, "group_matcher"):
            raise ConfigError(f"param_groups.layer_decay: {type(model).__name__} does not define "
                              "timm's layer grouping; use param_groups.backbone_lr_scale instead")
        # timm's groups also exempt biases and norms from weight decay, as its fine-tuning
        # recipes do (a group of weight_decay 0). The other groups leave the decay to the
        # optimizer's own setting: timm is given a stand-in to tell the two apart, since with
        # weight_decay 0 (Muon's default) they would look alike and Muon could not exempt the
        # biases and norms on its AdamW side as well (training/muon.py)
        groups = param_groups_layer_decay(model, weight_decay=1.0, layer_decay=layer_decay)
        for group in groups:
            if group["weight_decay"]:
                del group["weight_decay"]
    elif backbone_lr_scale != 1.0:
        head = {id(p) for p in classifier(model).parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) not in head], "lr_scale": backbone_lr_scale},
                  {"params": [p for p in params if id(p) in head], "lr_scale": 1.0}]
    else:
        return list(model.parameters())
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return [g for g in groups if g["params"]]
