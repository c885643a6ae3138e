"""Batched RandomResizedCrop (`aug=rrc`): the boxes drawn from torchvision's distribution
(RandomResizedCrop.make_params: area, aspect, fallback rate), the resize exact against
torchvision's F.resized_crop for fixed boxes, and BatchAugment / the reference transform with it."""


import pytest
import torch
import torchvision.transforms.v2.functional as TF
from scipy.stats import ks_2samp
from torchvision.transforms import InterpolationMode, v2

from experiments.batches.augment import BatchAugment
from experiments.batches.device import Normalize
from experiments.batches.resized_crop import central_box, resized_crop, sample_boxes
from experiments.batches.workers import torchvision_transform
from experiments.errors import ConfigError

N = 20_000
# float32 grid coordinates: a source position is off by up to ~1e-5 px, times a pixel-to-pixel
# step of up to 255 gives ~3e-3 on the 0..255 scale (measured: <= 0.003 at 224 -> 32 px)
ATOL = 0.01


def torchvision_boxes(n: int, h: int, w: int, scale, ratio) -> torch.Tensor:
    torch.manual_seed(0)
    rrc, image = v2.RandomResizedCrop(32, scale=scale, ratio=ratio), torch.zeros(1, h, w)
    return torch.tensor([[p["top"], p["left"], p["height"], p["width"]]
                         for p in (rrc.make_params([image]) for _ in range(n))])


@pytest.mark.parametrize("h,w,scale,ratio", [
    (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),  # the default, CIFAR-sized
    (96, 160, (0.08, 1.0), (3 / 4, 4 / 3)),  # non-square
    (64, 20, (0.3, 1.0), (3 / 4, 4 / 3)),  # narrow, large boxes: ~54% fall back
    (48, 48, (0.4, 0.9), (2.0, 4.0)),  # aspect far from the image's: ~68% fall back
])
def test_boxes_follow_torchvision_distribution(h, w, scale, ratio):
    ours = sample_boxes(N, h, w, scale, ratio, torch.Generator().manual_seed(0), "cpu")
    ref = torchvision_boxes(N, h, w, scale, ratio)
    assert ours.dtype == torch.long and ours.shape == (N, 4)
    top, left, bh, bw = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (bh > 0).all() and (bw > 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    fallback = central_box(h, w, ratio)
    rates = [(b == torch.tensor(fallback)).all(1).float().mean().item() for b in (ours, ref)]
    assert abs(rates[0] - rates[1]) < 0.02
    for measure in (lambda b: b[:, 2] * b[:, 3] / (h * w),  # area fraction
                    lambda b: (b[:, 3] / b[:, 2]).log(),  # log-aspect (width / height)
                    lambda b: b[:, 0].float(), lambda b: b[:, 1].float()):  # position
        assert ks_2samp(measure(ours.double()).numpy(), measure(ref.double()).numpy()).pvalue > 0.001


def test_fallback_is_torchvisions_central_crop():
    # scale 1 never fits a 64x16 image at aspect >= 3/4: every image falls back, like torchvision
    boxes = sample_boxes(100, 64, 16, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator(), "cpu")
    ref = torchvision_boxes(100, 64, 16, (1.0, 1.0), (3 / 4, 4 / 3))
    assert torch.equal(boxes, ref) and boxes[0].tolist() == [21, 0, 21, 16]
    assert central_box(32, 32, (3 / 4, 4 / 3)) == (0, 0, 32, 32)  # the whole image
    assert central_box(16, 64, (3 / 4, 4 / 3)) == (0, 21, 16, 21)


def reference(images, boxes, size, mirrored=None, antialias=False) -> torch.Tensor:
    out = torch.stack([TF.resized_crop(img.float(), *box.tolist(), [size, size],
                                       InterpolationMode.BILINEAR, antialias=antialias)
                       for img, box in zip(images, boxes)])
    if mirrored is not None:
        out = torch.where(mirrored.view(-1, 1, 1, 1), out.flip(-1), out)
    return out


BOXES = {  # (stored size, output size): fixed boxes (top, left, height, width)
    (32, 64): [[0, 0, 32, 32], [3, 5, 20, 11], [10, 0, 7, 30], [31, 31, 1, 1]],  # upscale
    (96, 64): [[0, 0, 96, 96], [7, 13, 80, 70], [50, 2, 46, 90], [0, 40, 96, 17]],  # down, mixed
    (224, 32): [[0, 0, 224, 224], [12, 30, 150, 190], [100, 100, 123, 60], [1, 2, 3, 4]],
}


@pytest.mark.parametrize("stored,size", list(BOXES))
@pytest.mark.parametrize("mirror", [False, True])
def test_fixed_boxes_equal_torchvision_resized_crop(stored, size, mirror):
    gen = torch.Generator().manual_seed(stored)
    images = torch.randint(0, 256, (4, 3, stored, stored), dtype=torch.uint8, generator=gen)
    boxes = torch.tensor(BOXES[(stored, size)])
    mirrored = torch.tensor([True, False, True, False]) if mirror else None
    ours = resized_crop(images, boxes, size, mirrored)
    assert ours.dtype == torch.float32 and ours.shape == (4, 3, size, size)
    assert (ours - reference(images, boxes, size, mirrored)).abs().max() < ATOL
    assert torch.equal(ours, resized_crop(images.float(), boxes, size, mirrored))  # uint8 = float


def test_downscale_differs_from_antialiased_torchvision_by_the_documented_amount():
    """The device path does not antialias. Upscaling is unaffected; a 2x downscale of a smooth
    image (8x8 noise upsampled, like photo content) differs from RandomResizedCrop's default
    (antialias=True) by 0.30 of 255 on average (max 2.6), pixel noise (the worst case: all its
    energy above the new Nyquist frequency) by 15.1 (max 78)."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (16, 3, 128, 128), generator=gen).float()
    smooth = torch.nn.functional.interpolate(torch.rand(16, 3, 8, 8, generator=gen) * 255,
                                             size=128, mode="bicubic").clamp(0, 255)
    whole = torch.tensor([[0, 0, 128, 128]] * 16)
    diff = {name: (resized_crop(x, whole, 64) - reference(x, whole, 64, antialias=True)).abs().mean().item()
            for name, x in (("noise", noise), ("smooth", smooth))}
    assert diff["smooth"] < 0.5 and 10 < diff["noise"] < 20, diff
    small = torch.randint(0, 256, (4, 3, 32, 32), generator=gen)
    up = torch.tensor([[0, 0, 32, 32], [4, 4, 20, 24]] * 2)
    assert (resized_crop(small, up, 64) - reference(small, up, 64, antialias=True)).abs().max() < ATOL


def rrc_select(aug: BatchAugment, images: torch.Tensor, size: int | None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return aug.select(aug.store(images), torch.arange(len(images)), gen, size=size)


@pytest.mark.parametrize("stored", [32, 96])
def test_batch_augment_rrc_serves_size_from_any_stored_size(stored):
    aug = BatchAugment(flip=True, rrc_scale=(0.08, 1.0))
    images = torch.randint(0, 256, (16, 3, stored, stored), dtype=torch.uint8)
    assert aug.resizes and not BatchAugment(crop_padding=4, flip=True).resizes
    assert torch.equal(aug.store(images), images)  # never padded
    out = rrc_select(aug, images, 64)
    assert out.dtype == torch.float32 and out.shape == (16, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 255  # the input's scale, not normalized
    assert rrc_select(aug, images, None).shape == (16, 3, stored, stored)
    # erasing after rrc, on the normalized batch
    erased = BatchAugment(rrc_scale=(0.5, 1.0), erase_p=1.0).erase(
        Normalize([0.5] * 3, [0.25] * 3, "cpu")(out), torch.Generator())
    assert (erased == 0).flatten(1).any(1).all()


def test_rrc_draws_per_image_per_epoch_and_is_seeded():
    aug = BatchAugment(flip=True, rrc_scale=[0.08, 1.0], rrc_ratio=[0.75, 4 / 3])
    images = torch.randint(0, 256, (64, 3, 48, 48), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(5)
    index = torch.arange(64)
    first, second = (aug.select(images, index, gen, size=32) for _ in range(2))
    assert ((first != second).flatten(1).any(1)).float().mean() > 0.9  # two epochs differ
    assert torch.equal(rrc_select(aug, images, 32, seed=5), first)  # same seed, same batch
    # every image its own box: a constant image per index shows its own value only
    flat = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 3, 48, 48) * 4
    out = rrc_select(aug, flat, 32)
    assert torch.allclose(out, flat[:, :, :32, :32].float(), atol=1e-3)
    boxes = sample_boxes(64, 48, 48, (0.08, 1.0), (0.75, 4 / 3), torch.Generator(), "cpu")
    assert len({tuple(b) for b in boxes.tolist()}) > 60


@pytest.mark.parametrize("kwargs,message", [
    (dict(rrc_scale=[0.08, 1.0], crop_padding=4), "aug.crop_padding=4"),
    (dict(rrc_scale=[0.08, 1.0], rotate_degrees=15.0), "aug.rotate_degrees=15.0"),
    (dict(rrc_scale=[0.0, 1.0]), "aug.rrc_scale must be"),
    (dict(rrc_scale=[0.5, 1.2]), "aug.rrc_scale must be"),
    (dict(rrc_scale=[0.9, 0.5]), "aug.rrc_scale must be"),
    (dict(rrc_scale=[0.08, 1.0], rrc_ratio=[0.0, 2.0]), "aug.rrc_ratio must be"),
    (dict(rrc_ratio=[2.0, 1.0]), "aug.rrc_ratio must be"),
])
def test_refused_rrc_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")) as err:
        BatchAugment(**kwargs)
    if "crop_padding" in kwargs or "rotate_degrees" in kwargs:
        assert "aug.rrc_scale=[0.08, 1.0]" in str(err.value)


def test_reference_transform_delivers_size():
    aug = BatchAugment(flip=True, rrc_scale=[0.08, 1.0])
    mean, std = [0.5] * 3, [0.25] * 3
    for stored in (32, 96):
        image = torch.randint(0, 256, (3, stored, stored), dtype=torch.uint8)
        for augment in (aug, None, BatchAugment(crop_padding=4, flip=True)):
            transform = torchvision_transform(augment, mean, std, 64, stored_size=stored)
            out = transform(image)
            assert out.shape == (3, 64, 64) and out.dtype == torch.float32, (stored, augment)
    names = [type(op).__name__ for op in torchvision_transform(aug, mean, std, 64).transforms]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    # sizes that match: the padding-crop path exactly as before, no Resize
    basic = torchvision_transform(BatchAugment(4, True), mean, std, 32, stored_size=32)
    assert [type(op).__name__ for op in basic.transforms][:2] == ["RandomCrop", "RandomHorizontalFlip"]


def test_device_and_dataloader_paths_draw_the_same_crops():
    """A ramp image (channel 0: row, channel 1: column): the span of values a view shows is its
    box's height and width, the sign of its column slope its flip; both paths, 512 views each."""
    from experiments.batches.device import DeviceLoader
    from experiments.batches.workers import WorkerLoader
    from experiments.data import Split

    n, px, mean, std = 512, 64, [0.0] * 3, [1.0] * 3
    ramp = torch.arange(px).mul(4).to(torch.uint8)
    image = torch.stack([ramp.view(px, 1).expand(px, px), ramp.view(1, px).expand(px, px),
                         torch.zeros(px, px, dtype=torch.uint8)])
    split = Split(image.expand(n, 3, px, px).contiguous(), torch.zeros(n, dtype=torch.long))
    aug = BatchAugment(flip=True, rrc_scale=[0.08, 1.0])
    device = DeviceLoader(split, n, Normalize(mean, std, "cpu"), device="cpu", augment=aug, seed=1)
    workers = WorkerLoader(split, n, torchvision_transform(aug, mean, std, px, stored_size=px),
                           device="cpu", workers=0, seed=1)
    (a, _), (b, _) = next(iter(device)), next(iter(workers))
    for views in (a, b):
        assert views.shape == (n, 3, px, px)
    spans = [[(x[:, c].amax((1, 2)) - x[:, c].amin((1, 2))).numpy() for x in (a, b)] for c in (0, 1)]
    for ours, ref in spans:
        assert ks_2samp(ours, ref).pvalue > 0.001
    flips = [(x[:, 1, :, -1].mean(1) < x[:, 1, :, 0].mean(1)).float().mean().item() for x in (a, b)]
    assert all(abs(f - 0.5) < 0.08 for f in flips)
