"""Pretrained timm models for fine-tuning: the weights through timm's own machinery, from the
local Hugging Face / torch-hub cache or from a file, the classifier replaced for our classes.

The weights fix the architecture, so a pretrained model keeps timm's stem (the CIFAR stem would
discard the pretrained one), its width and its input channels; its input size and normalization
are the pretrained ones. What any model takes is decided once, where the job builds
it (`input_for`); the batch pipeline resizes, repeats grey channels and normalizes to that on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn

from experiments.errors import ConfigError, UserError

PRETRAINED_KEYS = ("pretrained", "pretrained_file")  # the model config keys that ask for weights


def wants_pretrained(model_cfg) -> bool:
    """Whether a model config asks for pretrained weights (`model.pretrained` or a file)."""
    return any(model_cfg.get(key) for key in PRETRAINED_KEYS)


def create_at_size(name: str, image_size: int | None, **kwargs) -> nn.Module:
    """timm's model built for `image_size` where the architecture takes one (ViT-style), else
    as it is (it takes any input size)."""
    if image_size is None:
        return timm.create_model(name, **kwargs)
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError:  # this architecture takes any input size
        return timm.create_model(name, **kwargs)


@dataclass(frozen=True)
class ModelInput:
    """What a model takes: `size` x `size` images with `channels`, normalized with mean and
    std; and where its pretrained weights came from (None: trained from scratch)."""

    size: int  # square input side, pixels
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str | None = None  # the weights file, or the cache entry timm read


def input_for(model_cfg, data_cfg, model: nn.Module) -> ModelInput:
    """A model from scratch takes the dataset as it is (its size, channels and statistics);
    a pretrained one what its weights were trained on (timm's pretrained config)."""
    if not wants_pretrained(model_cfg):
        return ModelInput(data_cfg.image_size, data_cfg.channels, tuple(data_cfg.mean),
                          tuple(data_cfg.std))
    data = timm.data.resolve_model_data_config(model)
    file = model_cfg.get("pretrained_file")
    if file:
        weights = str(Path(file).expanduser().resolve())
    else:
        cfg = default_cfg(model_cfg.name)
        weights = cached_weights(cfg) or f"{cfg.hf_hub_id or cfg.url} (downloaded)"
    return ModelInput(model_cfg.get("image_size") or int(data["input_size"][-1]),
                      int(data["input_size"][0]), tuple(data["mean"]), tuple(data["std"]), weights)


def default_cfg(name: str):
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ConfigError(f"model.name={name!r}: timm has no pretrained weights for it. List the "
                          "ones it has with: python -c \"import timm; print(timm.list_models("
                          "pretrained=True))\"")
    return cfg


def cached_weights(cfg) -> str | None:
    """The local cache entry timm would read for these weights, or None if not downloaded."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
            "open_clip_model.safetensors", "model.safetensors", "pytorch_model.bin"]
        for filename in names:
            path = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(path, str):
                return f"hf-hub:{cfg.hf_hub_id} ({path})"
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if path.is_file():
            return f"{cfg.url} ({path})"
    return None


def missing_weights(name: str, err: Exception) -> UserError:
    return UserError(
        f"model.pretrained=true: no weights for timm's {name} in the local cache, and timm could "
        f"not download them ({type(err).__name__}: {str(err)[:200]}). Either download them once "
        f"where there is network, into the Hugging Face cache this machine reads (HF_HOME): "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\", or give the "
        "weights as a file: model.pretrained_file=PATH (a state dict or a timm checkpoint).")


def read_weights(file: Path) -> dict:
    """A state dict or timm checkpoint, read once, by timm's own reader (EMA weights preferred,
    `module.` prefixes removed), as tensors and plain containers only: a weights file never runs
    code. weights_only=True is timm's default from 1.0.26, which pyproject.toml requires (1.0.9
    to 1.0.25 read local files with weights_only=False); passed all the same, so that no
    library default decides it."""
    try:
        return timm.models.load_state_dict(str(file), weights_only=True)
    except Exception as err:  # torch.load / safetensors raise many types for a bad file
        code = pickled_objects(file)
        if code:
            raise UserError(f"model.pretrained_file={file} holds pickled Python objects ("
                            f"{', '.join(code)}) besides tensors: refused, and nothing in it was "
                            "run. A weights file holds tensors only: save `model.state_dict()` "
                            "with torch.save, or as .safetensors.") from None
        raise UserError(f"model.pretrained_file={file}: not a readable state dict or timm "
                        f"checkpoint ({type(err).__name__}: {err})") from None


def pickled_objects(file: Path) -> list[str]:
    """The globals a torch.save file names beyond torch's weights-only allowlist, found by
    reading its pickle's opcodes, not by running them ([] for any other kind of file)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
    except Exception:  # not a torch.save zip file (or torch < 2.5, which lacks the function)
        return []


def classifier_rows(state: dict, classifier: str | tuple | None) -> int | None:
    """The number of classes of the weights' classifier, or None if it has none we can see."""
    name = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    weight = state.get(f"{name}.weight") if name else None
    return None if weight is None else int(weight.shape[0])


def pretrained_model(name: str, num_classes: int, image_size: int | None, file: str | None,
                     **timm_kwargs) -> nn.Module:
    """timm's `name` with pretrained weights and a new classifier for `num_classes`.

    The weights load strictly with their own classifier (a file for another architecture, or
    with other key names, fails here instead of half-loading), then `reset_classifier` replaces
    the classifier: only it starts from random. The input channels stay the weights' (grey data
    is repeated to them on the way in: `input_for`).
    """
    cfg = default_cfg(name) if file is None else timm.models.get_pretrained_cfg(name)
    head = cfg.num_classes if cfg else 1000
    overlay = None
    if file is not None:
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"model.pretrained_file={file}: no such file")
        state = read_weights(path)  # read once, and handed to timm's loader as they are
        head = classifier_rows(state, cfg.classifier if cfg else None) or head
        overlay = dict(state_dict=state, num_classes=head)
    kwargs = dict(pretrained=True, num_classes=head, pretrained_cfg_overlay=overlay, **timm_kwargs)
    try:
        model = create_at_size(name, image_size, **kwargs)
    except Exception as err:  # hub and torch.load errors have many types (httpx, OSError, ...)
        if file is not None:  # a shape or key mismatch from the strict load
            raise UserError(f"model.pretrained_file={file} does not fit timm's {name}: "
                            f"{str(err)[:400]}") from None
        raise missing_weights(name, err) from None
    model.reset_classifier(num_classes)  # always new: the same count is not the same classes
    return model
