"""Batched RandomResizedCrop (+ flip): every image its own box, all resized in one `grid_sample`.

    RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip()

`sample_boxes` draws the boxes exactly as torchvision's `RandomResizedCrop.get_params` does (10
attempts of (area, log-aspect), the first that fits, else the central crop with the aspect
clamped to the ratio range), all attempts of the whole batch at once. `resized_crop` builds one
sampling grid for the batch straight from the boxes, with the pixel-centre mapping of
torchvision's `F.resized_crop(..., antialias=False)` (bilinear, `interpolate`'s
align_corners=False convention on the cropped window), flipped per image where asked.

Unlike torchvision's default (antialias=True), a downscale here is NOT antialiased: each output
pixel blends the 2x2 source pixels around its centre (tests/test_resized_crop.py measures the
difference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_boxes(n: int, h: int, w: int, scale, ratio, gen: torch.Generator, device,
                 attempts: int = 10) -> torch.Tensor:
    """(n, 4) long boxes (top, left, height, width) in an h x w image, one per image.

    Per attempt, as torchvision: area = uniform(scale) * h * w, aspect (width / height) =
    exp(uniform(log ratio)), box width = round(sqrt(area * aspect)), box height =
    round(sqrt(area / aspect)); it fits when 0 < width <= w and 0 < height <= h, and its corner is
    then uniform over the positions where it fits. No fitting attempt: the central crop.
    """
    dtype = wide(device)
    area = torch.rand(n, attempts, generator=gen, device=device, dtype=dtype)
    area = area.mul_(scale[1] - scale[0]).add_(scale[0]).mul_(h * w)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.rand(n, attempts, generator=gen, device=device, dtype=dtype)
    aspect = aspect.mul_(log_high - log_low).add_(log_low).exp_()
    box_w = (area * aspect).sqrt_().round_().long()  # round half to even, like Python's round
    box_h = (area / aspect).sqrt_().round_().long()
    fits = (box_w > 0) & (box_w <= w) & (box_h > 0) & (box_h <= h)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first fitting attempt (0 when none)
    box_h, box_w = box_h.gather(1, first).view(n), box_w.gather(1, first).view(n)
    u = torch.rand(n, 2, generator=gen, device=device, dtype=dtype)
    top = (u[:, 0] * (h - box_h + 1)).long().clamp_(min=0).minimum(h - box_h)
    left = (u[:, 1] * (w - box_w + 1)).long().clamp_(min=0).minimum(w - box_w)
    found = fits.any(dim=1)  # else the central crop (python scalars: no host-to-device copy)
    return torch.stack([torch.where(found, value, fallback) for value, fallback
                        in zip((top, left, box_h, box_w), central_box(h, w, ratio))], dim=1)


def wide(device) -> torch.dtype:
    """float64 for the few per-box numbers (float32 on MPS, which has no float64)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def central_box(h: int, w: int, ratio) -> tuple[int, int, int, int]:
    """torchvision's fallback: the whole image, or its centre with the aspect clamped to ratio."""
    in_ratio = w / h
    if in_ratio < min(ratio):
        box_w, box_h = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        box_w, box_h = int(round(h * max(ratio))), h
    else:
        box_w, box_h = w, h
    return (h - box_h) // 2, (w - box_w) // 2, box_h, box_w


def source_coords(start: torch.Tensor, length: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """(n, size) grid_sample coordinates (align_corners=False) of the output pixels' sources.

    Along one axis: output pixel i of a window [start, start+length) resized to `size` reads the
    window at (i + 0.5) * length / size - 0.5, clamped to [0, length - 1] as interpolate clamps
    it (so a window never blends in pixels outside it); that is pixel start + s of the image,
    whose normalized coordinate in an image of `extent` pixels is (2 (start + s) + 1) / extent - 1.
    """
    dtype = wide(start.device)
    i = torch.arange(size, device=start.device, dtype=dtype).view(1, size)
    length = length.to(dtype).view(-1, 1)
    s = ((i + 0.5) * (length / size) - 0.5).clamp_(min=0).minimum(length - 1)
    return ((start.to(dtype).view(-1, 1) + s) * 2 + 1).div_(extent).sub_(1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int,
                 mirrored: torch.Tensor | None = None) -> torch.Tensor:
    """float32 (n, C, size, size): each image's box (top, left, height, width) resized bilinearly,
    mirrored horizontally where `mirrored` (n,) is True; values in the input's scale (0..255 for
    uint8). One grid_sample for the batch."""
    n, _, h, w = images.shape
    ys = source_coords(boxes[:, 0], boxes[:, 2], size, h).float()  # (n, size)
    xs = source_coords(boxes[:, 1], boxes[:, 3], size, w).float()
    if mirrored is not None:  # flip after the resize: output column x reads column size-1-x
        xs = torch.where(mirrored.view(n, 1), xs.flip(1), xs)
    grid = torch.stack([xs.view(n, 1, size).expand(n, size, size),
                        ys.view(n, size, 1).expand(n, size, size)], dim=-1)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
