"""Batched augmentation with per-image randomness, on whatever device the dataset lives on.

torchvision's v2 transforms applied to a batch draw ONE set of parameters for the whole batch, and
per-image transforms in a DataLoader are slow. Here every image gets its own crop offset, flip,
rotation angle and erasing box, all drawn for the batch at once, with exactly the semantics of

    RandomCrop(32, padding=p, padding_mode=m) -> RandomHorizontalFlip() -> RandomRotation(d)   (nearest, fill 0)
    -> ToTensor -> Normalize(mean, std) -> RandomErasing(p, scale, ratio, value=0)

`aug=rrc` (RandomResizedCrop + flip, at any image size) is experiments.batches.resized_crop.

How it stays cheap:
- the dataset is stored padded once (zeros, or reflected: `crop_pad_mode`), so a random crop is a
  window of it; crop and flip are
  ONE uint8 gather with one index per output pixel, shared by the channels;
- rotation is one sampling grid + `grid_sample` for the whole batch, on the cropped images;
- erasing is a mask built from per-image row and column ranges, multiplied in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from experiments.batches.resized_crop import resized_crop, sample_boxes
from experiments.errors import ConfigError
from experiments.values import POSITIVE, PROBABILITY, Rule, integer, number, one_of, pair, shown


def crop_flip_at(stored: torch.Tensor, index: torch.Tensor, padding: int,
                 shift: torch.Tensor | None, mirrored: torch.Tensor | None) -> torch.Tensor:
    """Images `index` of the padded dataset `stored`, each cropped at its own offset and flipped.

    `shift` is (n, 2) crop offsets in [0, 2*padding] (None: centre crop), `mirrored` (n,) bool.
    Returns uint8 (n, C, H, W).
    """
    n, device = len(index), stored.device
    c, padded_h, padded_w = stored.shape[1:]
    h, w = padded_h - 2 * padding, padded_w - 2 * padding
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if mirrored is not None:  # flip after crop: output column x reads crop column w-1-x
        cols = torch.where(mirrored.view(n, 1), cols.flip(1), cols)
    offsets = shift if shift is not None else torch.full((n, 2), padding, device=device)
    rows, cols = rows + offsets[:, :1], cols + offsets[:, 1:]
    # one flat index per output pixel, shared by the channels: a single uint8 gather
    pixel = (rows.view(n, h, 1) * padded_w + cols.view(n, 1, w)).view(n, 1, h * w)
    # index_select: ~25x faster than stored[index] for a uint8 batch on a CPU
    batch = stored.index_select(0, index).view(n, c, padded_h * padded_w)
    return batch.gather(2, pixel.expand(n, c, h * w)).view(n, c, h, w)


def rotate_by(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each float image counter-clockwise by its angle, about its centre; nearest, fill 0."""
    n, _, h, w = images.shape
    if h != w:  # normalized coordinates scale alike only on a square
        raise ValueError(f"rotate_by needs square images, got {h}x{w}")
    radians = degrees.float().mul(math.pi / 180).view(n, 1, 1)
    cos, sin = radians.cos(), radians.sin()
    # pixel centres in grid_sample's normalized coordinates (align_corners=False)
    x = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=images.device).view(1, 1, w)
    y = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=images.device).view(1, h, 1)
    # where each output pixel reads from (y points down, as in torchvision's rotate); built
    # directly, as affine_grid's batched matmul is several times slower on a CPU
    grid = torch.stack([cos * x - sin * y, sin * x + cos * y], dim=-1)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def erasing_boxes(n: int, h: int, w: int, p: float, scale: tuple[float, float],
                  ratio: tuple[float, float], gen: torch.Generator, device,
                  attempts: int = 10) -> torch.Tensor:
    """A (n, 1, h, w) bool mask of one box per erased image, drawn like torchvision's RandomErasing.

    torchvision tries up to 10 (area, aspect) draws and takes the first box that fits; all the
    attempts are drawn at once here and the first fitting one is picked per image.
    """
    area = uniform(n * attempts, *scale, gen, device).mul_(h * w).view(n, attempts)
    log_ratio = uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), gen, device)
    aspect = log_ratio.exp_().view(n, attempts)
    box_h = (area * aspect).sqrt_().round_().long()
    box_w = (area / aspect).sqrt_().round_().long()
    fits = (box_h < h) & (box_w < w)
    first = fits.int().argmax(dim=1, keepdim=True)
    box_h, box_w = box_h.gather(1, first), box_w.gather(1, first)  # (n, 1)
    erase = (torch.rand(n, 1, generator=gen, device=device) < p) & fits.any(dim=1, keepdim=True)
    top = (torch.rand(n, 1, generator=gen, device=device) * (h - box_h + 1)).long()
    left = (torch.rand(n, 1, generator=gen, device=device) * (w - box_w + 1)).long()
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    in_rows = (rows >= top) & (rows < top + box_h) & erase  # (n, h)
    in_cols = (cols >= left) & (cols < left + box_w)  # (n, w)
    return in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)


def uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device).mul_(high - low).add_(low)


FRACTION_PAIR = pair(number(0, 1, open_low=True), "")
AUG_RULES = {  # aug.<key>: what it must be (the ranges torchvision takes)
    "crop_padding": integer(0, "an integer >= 0 (pixels of padding)"),
    "crop_pad_mode": one_of("zeros", "reflect"),
    "flip": Rule(lambda v: isinstance(v, bool), "true or false"),
    "rotate_degrees": number(0, 180, "a number of degrees in [0, 180] (angles are drawn from [-d, d])"),
    "erase_p": PROBABILITY,
    "erase_scale": Rule(FRACTION_PAIR.test, "[min, max] shares of the image area, 0 < min <= max <= 1"),
    "erase_ratio": pair(POSITIVE, "[min, max] aspect ratios, 0 < min <= max"),
    "rrc_scale": Rule(FRACTION_PAIR.test, "").or_null(
        "null (no RandomResizedCrop) or [min, max] shares of the image area, 0 < min <= max <= 1"),
    "rrc_ratio": pair(POSITIVE, "[min, max] aspect ratios (width / height), 0 < min <= max"),
}


def check_aug(**values) -> None:
    """The `aug` group's values, refused with the key to change."""
    for key, rule in AUG_RULES.items():
        rule.check(f"aug.{key}", values[key])
    if values["rrc_scale"] is not None:
        for key in ("crop_padding", "rotate_degrees"):
            if values[key] > 0:
                raise ConfigError(
                    f"aug.rrc_scale={shown(values['rrc_scale'])} (RandomResizedCrop) cannot be "
                    f"combined with aug.{key}={values[key]}: set aug.{key}=0, or aug.rrc_scale=null")


class BatchAugment:
    """The `aug` config group. The loader calls, per batch: `select` (uint8 crop+flip; with rrc,
    float32 resized crop+flip), `rotate` (float, before normalization: the fill is black),
    `erase` (after normalization)."""

    def __init__(self, crop_padding: int = 0, flip: bool = False, rotate_degrees: float = 0.0,
                 erase_p: float = 0.0, erase_scale=(0.02, 0.33), erase_ratio=(0.3, 3.3),
                 rrc_scale: list | tuple | None = None, rrc_ratio=(3 / 4, 4 / 3),
                 crop_pad_mode: str = "zeros"):
        check_aug(crop_padding=crop_padding, crop_pad_mode=crop_pad_mode, flip=flip,
                  rotate_degrees=rotate_degrees,
                  erase_p=erase_p, erase_scale=erase_scale, erase_ratio=erase_ratio,
                  rrc_scale=rrc_scale, rrc_ratio=rrc_ratio)
        self.crop_padding, self.flip, self.rotate_degrees = crop_padding, flip, rotate_degrees
        self.crop_pad_mode = crop_pad_mode
        self.erase_p, self.erase_scale, self.erase_ratio = erase_p, tuple(erase_scale), tuple(erase_ratio)
        self.rrc_scale = None if rrc_scale is None else tuple(float(v) for v in rrc_scale)
        self.rrc_ratio = tuple(float(v) for v in rrc_ratio)

    @property
    def resizes(self) -> bool:
        """True when `select` resizes (RandomResizedCrop): it then returns float32 at `size`."""
        return self.rrc_scale is not None

    def store(self, images: torch.Tensor) -> torch.Tensor:
        """The dataset as kept on the device: padded once, so every crop is a window of it
        (reflect, as torchvision's padding_mode="reflect": the edge pixel is not repeated)."""
        p = self.crop_padding  # 0 under rrc (check_aug refuses both)
        if not p:
            return images
        if self.crop_pad_mode == "zeros":
            return F.pad(images, (p, p, p, p))
        # torch reflects float tensors only; in chunks, so that the float copy stays small
        return torch.cat([F.pad(chunk.float(), (p, p, p, p), mode="reflect").to(images.dtype)
                          for chunk in images.split(4096)])

    def select(self, stored: torch.Tensor, index: torch.Tensor, gen: torch.Generator,
               size: int | None = None) -> torch.Tensor:
        """Images `index`, cropped and flipped: uint8 at the stored size; with rrc, float32
        (n, C, size, size) in 0..255 (size None: the stored height). Without rrc `size` is
        ignored."""
        n, device, p = len(index), stored.device, self.crop_padding
        if self.resizes:
            h, w = stored.shape[-2:]
            boxes = sample_boxes(n, h, w, self.rrc_scale, self.rrc_ratio, gen, device)
            mirrored = torch.rand(n, generator=gen, device=device) < 0.5 if self.flip else None
            return resized_crop(stored.index_select(0, index), boxes, size or h, mirrored)
        if not (p or self.flip):
            return stored.index_select(0, index)
        shift = torch.randint(0, 2 * p + 1, (n, 2), generator=gen, device=device) if p else None
        mirrored = torch.rand(n, generator=gen, device=device) < 0.5 if self.flip else None
        return crop_flip_at(stored, index, p, shift, mirrored)

    def rotate(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.rotate_degrees == 0:
            return images
        d = self.rotate_degrees
        return rotate_by(images, uniform(len(images), -d, d, gen, images.device))

    def erase(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero a random box per image, in place; on normalized images 0 is the mean colour."""
        if self.erase_p == 0:
            return images
        n, _, h, w = images.shape
        box = erasing_boxes(n, h, w, self.erase_p, self.erase_scale, self.erase_ratio, gen,
                            images.device)
        return images.mul_(~box)  # a broadcast multiply is ~10x faster than masked_fill_ on CPU

    def __repr__(self) -> str:
        rrc = f", rrc_scale={self.rrc_scale}, rrc_ratio={self.rrc_ratio}" if self.resizes else ""
        return (f"BatchAugment(crop_padding={self.crop_padding}, crop_pad_mode={self.crop_pad_mode}, "
                f"flip={self.flip}, "
                f"rotate_degrees={self.rotate_degrees}, erase_p={self.erase_p}{rrc})")
