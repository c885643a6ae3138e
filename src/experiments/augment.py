"""Batched augmentation with per-image randomness, on whatever device the batch lives on.

torchvision's v2 transforms applied to a batch draw ONE set of parameters for the whole batch, and
per-sample PIL transforms in a DataLoader are slow. Here every image gets its own crop offset, flip,
rotation angle and erasing box, drawn for the whole batch at once, with the same semantics as

    RandomCrop(32, padding=p) -> RandomHorizontalFlip() -> RandomRotation(d)   (nearest, fill 0)
    -> ToTensor -> Normalize(mean, std) -> RandomErasing(p, scale, ratio, value=0)

Crop, flip and rotation fold into ONE nearest-neighbour warp that gathers uint8 pixels, so the
geometric part never leaves uint8 and makes one pass over memory.
"""

from __future__ import annotations

import math

import torch


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _randint(n: int, low: int, high: int, gen: torch.Generator, device) -> torch.Tensor:
    """Uniform integers in [low, high] inclusive, one per image."""
    return torch.randint(low, high + 1, (n,), generator=gen, device=device)


def draw_geometry(n: int, padding: int, flip: bool, degrees: float, gen: torch.Generator,
                  device) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-image (angle in degrees, mirrored?, (dy, dx) crop shift); None where the op is off."""
    angle = _uniform(n, -degrees, degrees, gen, device) if degrees > 0 else None
    mirrored = torch.rand(n, generator=gen, device=device) < 0.5 if flip else None
    # a crop of the zero-padded image is a shift by -padding..padding
    shift = _randint(2 * n, -padding, padding, gen, device).view(n, 2) if padding > 0 else None
    return angle, mirrored, shift


def source_pixels(h: int, w: int, angle: torch.Tensor | None, mirrored: torch.Tensor | None,
                  shift: torch.Tensor | None, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image and output pixel, the (row, col) of the input pixel it copies.

    Works backwards from the output: undo the rotation (about the image centre), then the flip,
    then the crop shift. Coordinates outside the image read zeros, as padding and rotation fill do.
    """
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y = (torch.arange(h, device=device, dtype=torch.float32) - cy).view(1, h, 1)
    x = (torch.arange(w, device=device, dtype=torch.float32) - cx).view(1, 1, w)
    if angle is not None:
        radians = (angle * (math.pi / 180)).view(n, 1, 1)
        cos, sin = radians.cos(), radians.sin()
        # counter-clockwise on screen (y points down), as torchvision's rotate
        x, y = cos * x - sin * y, sin * x + cos * y
    x, y = x.expand(n, h, w), y.expand(n, h, w)
    if mirrored is not None:
        x = torch.where(mirrored.view(n, 1, 1), -x, x)
    rows, cols = (y + cy).round_().long(), (x + cx).round_().long()
    if shift is not None:
        # torchvision rotates the *cropped* image, so what the rotation brings in from outside
        # the crop window is fill (0), even where the original image has pixels
        outside_window = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
        rows = (rows + shift[:, 0].view(n, 1, 1)).masked_fill_(outside_window, -1)
        cols = cols + shift[:, 1].view(n, 1, 1)
    return rows, cols


def warp_nearest(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = images[b, :, rows[b,i,j], cols[b,i,j]], or 0 where that is outside."""
    n, c, h, w = images.shape
    outside = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
    index = torch.where(outside, h * w, rows * w + cols)  # h*w points at an appended zero pixel
    flat = torch.nn.functional.pad(images.reshape(n, c, h * w), (0, 1))
    out = flat.gather(2, index.view(n, 1, h * w).expand(n, c, h * w))
    return out.view(n, c, h, w)


def erasing_boxes(n: int, h: int, w: int, p: float, scale: tuple[float, float],
                  ratio: tuple[float, float], gen: torch.Generator, device,
                  attempts: int = 10) -> torch.Tensor:
    """A (n, 1, h, w) bool mask of one box per erased image, drawn like torchvision's RandomErasing.

    torchvision tries up to 10 (area, aspect) draws and takes the first box that fits; all the
    attempts are drawn at once here and the first fitting one is picked per image.
    """
    area = _uniform(n * attempts, *scale, gen, device).mul_(h * w).view(n, attempts)
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), gen, device)
    aspect = log_r.exp_().view(n, attempts)
    box_h = (area * aspect).sqrt_().round_().long()
    box_w = (area / aspect).sqrt_().round_().long()
    fits = (box_h < h) & (box_w < w)
    first = fits.int().argmax(dim=1, keepdim=True)
    box_h, box_w = box_h.gather(1, first).squeeze(1), box_w.gather(1, first).squeeze(1)
    erase = (torch.rand(n, generator=gen, device=device) < p) & fits.any(dim=1)
    top = (torch.rand(n, generator=gen, device=device) * (h - box_h + 1)).long()
    left = (torch.rand(n, generator=gen, device=device) * (w - box_w + 1)).long()
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + box_w).view(n, 1, 1)))
    return (inside & erase.view(n, 1, 1)).unsqueeze(1)


class BatchAugment:
    """The `aug` config group: geometric warp on uint8 images, erasing on normalized ones."""

    def __init__(self, crop_padding: int = 0, flip: bool = False, rotate_degrees: float = 0.0,
                 erase_p: float = 0.0, erase_scale=(0.02, 0.33), erase_ratio=(0.3, 3.3)):
        assert crop_padding >= 0 and rotate_degrees >= 0 and 0 <= erase_p <= 1, "bad aug settings"
        self.crop_padding, self.flip, self.rotate_degrees = crop_padding, flip, rotate_degrees
        self.erase_p, self.erase_scale, self.erase_ratio = erase_p, tuple(erase_scale), tuple(erase_ratio)

    @property
    def warps(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.rotate_degrees > 0

    def geometric(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.warps:
            return images
        n, _, h, w = images.shape
        params = draw_geometry(n, self.crop_padding, self.flip, self.rotate_degrees, gen, images.device)
        return warp_nearest(images, *source_pixels(h, w, *params, n, images.device))

    def erase(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero a random box; on normalized images 0 is the dataset mean colour."""
        if self.erase_p == 0:
            return images
        n, _, h, w = images.shape
        mask = erasing_boxes(n, h, w, self.erase_p, self.erase_scale, self.erase_ratio, gen,
                             images.device)
        return images.masked_fill(mask, 0.0)

    def __repr__(self) -> str:
        return (f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip}, "
                f"rotate_degrees={self.rotate_degrees}, erase_p={self.erase_p})")
