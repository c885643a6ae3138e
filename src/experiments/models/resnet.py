"""timm's ResNet-18, with the CIFAR stem that 32x32 images need, and a width setting.

timm's ImageNet stem (7x7 stride-2 conv + stride-2 max-pool) shrinks a 32x32 image to 8x8 before
the first block; that cost the original course report ~16 points. The CIFAR stem is one 3x3
stride-1 conv and no pooling, so the first stage sees all 32x32 positions.
"""

import timm
import torch.nn as nn

from experiments.errors import ConfigError
from experiments.models.checks import check_timm_name, check_width
from experiments.models.pretrained import create_at_size, pretrained_model

SMALL_IMAGES = 64  # px: up to here CIFAR-style recipes apply (a stride-1 stem, a padding crop)
TIMM_MODEL = "experiments.models.timm_model"  # model=timm's _target_


def has_width(model_cfg) -> bool:
    """Whether a model config's model has `model.width`: every model here does; of timm's
    (model=timm), only the ResNet family, through timm's `channels`."""
    if model_cfg.get("_target_") != TIMM_MODEL:
        return True
    name = model_cfg.get("name")
    return isinstance(name, str) and timm.models.is_model_in_modules(name, ["resnet"])


def _conv(in_chans: int, out_chans: int, kernel: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chans, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as timm does
    return conv


def resnet_channels(width: int) -> tuple[int, ...]:
    """The four stages' channels, for timm's `channels`: `width`, then doubling."""
    return tuple(width * m for m in (1, 2, 4, 8))


def timm_resnet18(num_classes: int, width: int = 64, cifar_stem: bool = True,
                  in_chans: int = 3, **timm_kwargs) -> nn.Module:
    """`width` is the first stage's channels (64 = the standard model); later stages double it."""
    check_width(width)
    model = timm.create_model(
        "resnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans,
        channels=resnet_channels(width), **timm_kwargs)
    if cifar_stem:
        model.conv1 = _conv(in_chans, width, 3, 1)
        model.maxpool = nn.Identity()
    if width != 64:
        # timm's single-conv stem is 64 wide whatever `channels` says: narrow it too, and let
        # the first block take `width` channels directly (no projection shortcut needed)
        model.conv1 = _conv(in_chans, width, *((3, 1) if cifar_stem else (7, 2)))
        model.bn1 = nn.BatchNorm2d(width)
        first = model.layer1[0]
        first.conv1, first.downsample = _conv(width, width, 3, 1), None
    return model


def timm_model(name: str, num_classes: int, in_chans: int = 3, image_size: int | None = 32,
               cifar_stem: bool = True, width: int | None = None, pretrained: bool = False,
               pretrained_file: str | None = None, **timm_kwargs) -> nn.Module:
    """Any timm model by name, from scratch (`model=timm model.name=resnet50`), or pretrained
    (`model.pretrained=true`, or weights from `model.pretrained_file`: see models/pretrained.py;
    `image_size` null: the pretrained input size).

    For small images (<= 64 px) with cifar_stem: a ResNet-style 7x7 stride-2 stem becomes a 3x3
    stride-1 conv without max-pool, an EfficientNet/MobileNet-style stride-2 `conv_stem` gets
    stride 1; models that are built for one input size (ViT-style) are told the real one.
    `width` (None: the model as timm defines it) is the first stage's channels of a model of
    timm's ResNet family, passed as timm's `channels` (its single-conv stem stays 64 wide);
    other architectures have no such knob in timm, only their named size variants.
    """
    check_timm_name(name)
    if pretrained or pretrained_file:
        if width is not None:
            raise ConfigError(f"model.width={width}: a pretrained model's size is its weights'; "
                              "use model.width=null (or a smaller variant by model.name)")
        # timm's own stem and input channels, never the CIFAR stem: that would discard the
        # pretrained one (in_chans: the weights'; grey data is repeated to them)
        return pretrained_model(name, num_classes, image_size, pretrained_file, **timm_kwargs)
    if image_size is None:
        raise ConfigError("model.image_size=null means the pretrained input size: it needs "
                          "model.pretrained=true; from scratch, give a size (e.g. ${data.image_size})")
    kwargs = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **timm_kwargs)
    if width is not None:
        check_width(width)
        if not has_width({"_target_": TIMM_MODEL, "name": name}):
            raise ConfigError(
                f"model.width={width}: timm's {name} has no width setting (only timm's ResNet "
                "family has one here). Use model.width=null for its standard size, or a smaller "
                "variant by name (e.g. model.name=mobilenetv3_small_050).")
        kwargs["channels"] = resnet_channels(width)
    model = create_at_size(name, image_size, **kwargs)
    if cifar_stem and image_size <= SMALL_IMAGES:
        shrink_stem(model)
    return model


def shrink_stem(model: nn.Module) -> None:
    conv1, stem = getattr(model, "conv1", None), getattr(model, "conv_stem", None)
    if isinstance(conv1, nn.Conv2d) and conv1.stride != (1, 1):
        model.conv1 = _conv(conv1.in_channels, conv1.out_channels, 3, 1)
    if isinstance(stem, nn.Conv2d) and stem.stride != (1, 1):
        stem.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
