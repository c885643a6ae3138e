"""Batched per-image augmentation: exact against torchvision for fixed parameters, and the same
random distributions as torchvision's RandomCrop / RandomHorizontalFlip / RandomRotation /
RandomErasing. Every image gets its own draw, and every epoch a new one."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from experiments.batches import augment as augment_mod
from experiments.batches.augment import BatchAugment, crop_flip_at, erasing_boxes, rotate_by
from experiments.batches.device import DeviceLoader, Normalize
from experiments.data import Split

N = 4000


def coordinate_images(n: int, size: int = 32) -> torch.Tensor:
    """Channel 0 holds row+1, channel 1 col+1 (0 means "padding/fill"), channel 2 is 255."""
    rows = torch.arange(1, size + 1, dtype=torch.uint8).view(size, 1).expand(size, size)
    cols = torch.arange(1, size + 1, dtype=torch.uint8).view(1, size).expand(size, size)
    img = torch.stack([rows, cols, torch.full_like(rows, 255)])
    return img.unsqueeze(0).repeat(n, 1, 1, 1)


def augmented(aug: BatchAugment, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The geometric part as the loader runs it (uint8 select, float rotation), back in uint8."""
    gen = torch.Generator().manual_seed(seed)
    out = aug.rotate(aug.select(aug.store(images), torch.arange(len(images)), gen).float(), gen)
    return out.round().to(torch.uint8)


@pytest.mark.parametrize("angle", [0.0, 10.0, -7.0, 15.0, -14.9])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shift", [(0, 0), (2, -3), (-4, 4)])
def test_warp_equals_torchvision_pipeline(angle, flip, shift):
    img = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cropped = crop_flip_at(F.pad(img, (4, 4, 4, 4)), torch.tensor([0]), 4,
                           torch.tensor([[4 + shift[0], 4 + shift[1]]]), torch.tensor([flip]))
    ours = rotate_by(cropped.float(), torch.tensor([angle]))
    ref = TF.crop(TF.pad(img, [4] * 4), 4 + shift[0], 4 + shift[1], 32, 32)
    if flip:
        ref = TF.horizontal_flip(ref)
    ref = TF.rotate(ref, angle, interpolation=InterpolationMode.NEAREST)
    assert torch.equal(ours, ref.float())


@pytest.mark.parametrize("shift", [(0, 0), (1, 3), (4, 4), (2, 0)])
def test_reflect_padded_crops_equal_torchvisions(shift):
    """aug.crop_pad_mode=reflect (the speed runs'): the stored dataset is padded as torchvision's
    RandomCrop(padding_mode="reflect") pads, so every crop equals torchvision's at that offset."""
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    aug = BatchAugment(crop_padding=4, crop_pad_mode="reflect")
    ours = crop_flip_at(aug.store(images), torch.arange(3), 4, torch.tensor([shift] * 3), None)
    ref = TF.crop(TF.pad(images, [4] * 4, padding_mode="reflect"), *shift, 32, 32)
    assert torch.equal(ours, ref)
    assert not torch.equal(aug.store(images), BatchAugment(crop_padding=4).store(images))


def test_crop_offsets_stay_in_range_and_cover_it():
    out = augmented(BatchAugment(crop_padding=4), coordinate_images(N))
    dy = out[:, 0, 16, 16].long() - 1 - 16  # the centre pixel always comes from inside the image
    dx = out[:, 1, 16, 16].long() - 1 - 16
    for d in (dy, dx):
        counts = torch.bincount(d + 4, minlength=9)
        assert d.min() == -4 and d.max() == 4 and len(counts) == 9
        assert (counts.float() / N - 1 / 9).abs().max() < 0.03  # uniform like RandomCrop
    # a shifted image shows zero padding on the side it moved away from
    assert ((out[:, 0, 0, 0] == 0) == ((dy < 0) | (dx < 0))).all()


def test_flips_happen_about_half_the_time():
    out = augmented(BatchAugment(flip=True), coordinate_images(N))
    flipped = out[:, 1, 0, 0] == 32
    assert ((out[:, 1, 0, 0] == 1) | flipped).all()
    assert abs(flipped.float().mean().item() - 0.5) < 0.03


def test_rotation_keeps_shapes_and_angle_range(monkeypatch):
    angles = []

    def recording(images, degrees):
        angles.append(degrees)
        return rotate_by(images, degrees)

    monkeypatch.setattr(augment_mod, "rotate_by", recording)
    out = augmented(BatchAugment(rotate_degrees=15.0), coordinate_images(N))
    assert out.shape == (N, 3, 32, 32)
    angle = angles[0]
    assert angle.min() >= -15 and angle.max() <= 15 and angle.min() < -14 and angle.max() > 14
    assert abs(angle.mean().item()) < 0.5  # uniform like RandomRotation
    # the centre pixel stays, a pixel 12 px right of it moves with the angle
    assert (out[:, :2, 16, 16] == 17).all()
    assert ((out[:, 0, 16, 28].float() - 17).abs() <= 12 * math.sin(math.radians(15)) + 1).all()


def test_erasing_rate_and_box_shapes_match_torchvision():
    gen = torch.Generator().manual_seed(0)
    masks = erasing_boxes(N, 32, 32, 0.5, (0.02, 0.33), (0.3, 3.3), gen, "cpu")[:, 0]
    erased = masks.flatten(1).any(1)
    assert abs(erased.float().mean().item() - 0.5) < 0.03
    heights = masks[erased].any(2).sum(1).float()
    widths = masks[erased].any(1).sum(1).float()
    areas = masks[erased].flatten(1).sum(1).float()
    assert torch.equal(areas, heights * widths)  # rectangles
    assert areas.min() >= 0.02 * 1024 * 0.8 and areas.max() <= 0.33 * 1024 * 1.2
    ratios = heights / widths
    assert ratios.min() >= 0.3 * 0.7 and ratios.max() <= 3.3 / 0.7

    torch.manual_seed(0)
    ref = [T.RandomErasing.get_params(torch.zeros(3, 32, 32), (0.02, 0.33), (0.3, 3.3), [0])
           for _ in range(N)]
    ref_areas = torch.tensor([float(h * w) for _, _, h, w, _ in ref])
    ref_log_ratio = torch.tensor([math.log(h / w) for _, _, h, w, _ in ref])
    assert abs(areas.mean() - ref_areas.mean()) / ref_areas.mean() < 0.05
    assert abs(areas.std() - ref_areas.std()) / ref_areas.std() < 0.08
    assert abs(ratios.log().mean() - ref_log_ratio.mean()) < 0.08
    # boxes are placed anywhere they fit, like torchvision: every row and column gets erased
    assert masks[erased].any(0).all()


def test_erase_zeroes_normalized_pixels_in_the_box():
    aug = BatchAugment(erase_p=1.0)
    x = torch.ones(16, 3, 32, 32)
    out = aug.erase(x, torch.Generator().manual_seed(0))
    zero = out == 0
    assert zero.flatten(1).any(1).all()
    assert torch.equal(zero[:, 0], zero[:, 1])  # all channels of a pixel together


def test_each_image_gets_its_own_draw():
    out = augmented(BatchAugment(crop_padding=4, flip=True), coordinate_images(64))
    assert len({tuple(o[:2, 16, 16].tolist()) + (o[1, 0, 0].item(),) for o in out}) > 20


def test_two_epochs_give_different_views_and_never_alter_the_stored_images():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    stored = images.clone()
    loader = DeviceLoader(Split(images, torch.arange(32)), 32, Normalize([0.5] * 3, [0.25] * 3, "cpu"),
                          device="cpu", augment=BatchAugment(4, True, 15.0, 0.5), shuffle=False)
    (first, _), (second, _) = next(iter(loader)), next(iter(loader))
    assert first.shape == second.shape == (32, 3, 32, 32) and first.dtype == torch.float32
    differs = (first != second).flatten(1).any(1)
    assert differs.float().mean() > 0.9
    assert torch.equal(images, stored)  # the split's tensor, untouched
    assert torch.equal(loader.images[:, :, 4:-4, 4:-4], stored)  # the device copy: originals, padded


def test_normalize_matches_torchvision():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    mean, std = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
    ours = Normalize(mean, std, "cpu")(images)
    ref = T.Normalize(mean, std)(images.float() / 255)
    assert ours.dtype == torch.float32 and torch.allclose(ours, ref, atol=1e-5)


def test_no_augmentation_is_identity():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(augmented(BatchAugment(), images), images)
